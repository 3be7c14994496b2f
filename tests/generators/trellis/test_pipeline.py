"""The whole ``trellis`` generator on tiny random checkpoints, from a real photo."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import skimage
import torch
from PIL import Image
from pydantic import ValidationError

from ai_engine.errors import Canceled, GenerateError
from ai_engine.generators.trellis.gs_decoder import GaussianTensors
from ai_engine.generators.trellis.pipeline import (
    TrellisGenerator,
    TrellisParams,
    to_service_gaussians,
)
from tests.generators.trellis.tiny import OCCUPANCY_RESOLUTION, write_tiny_trellis

FAST = TrellisParams(ss_steps=3, slat_steps=3, num_oversamples=2)


@pytest.fixture(scope="module")
def cutout() -> np.ndarray:
    """scikit-image's photo of a cat, cut out by an ellipse (soft edge) around it."""
    path = os.path.join(os.path.dirname(skimage.__file__), "data", "chelsea.png")
    rgba = np.asarray(Image.open(path).convert("RGBA")).copy()
    height, width = rgba.shape[:2]
    yy, xx = np.mgrid[:height, :width]
    radius = (((yy - 0.5 * height) / (0.45 * height)) ** 2
              + ((xx - 0.5 * width) / (0.35 * width)) ** 2)
    rgba[..., 3] = np.clip((1.0 - radius) * 2000, 0, 255).astype(np.uint8)
    return rgba


def test_photo_to_gaussians_at_the_service_defaults(tiny_generator: TrellisGenerator,
                                                    cutout: np.ndarray) -> None:
    framed = tiny_generator.frame(cutout)
    assert framed.shape == (518, 518, 4)
    fractions: list[float] = []
    out = tiny_generator(framed, params=TrellisParams(), seed=7, on_progress=fractions.append)
    g = out.gaussians
    assert g is not None and out.mesh is None and out.info is not None
    counts = out.info["oversample_voxels"]
    assert len(counts) == 3 and out.info["voxels"] == min(counts) > 0
    assert len(g) == 32 * out.info["voxels"]
    for name in ("positions", "sh_dc", "opacity_logits", "log_scales", "rotations"):
        value = getattr(g, name)
        assert value.dtype == np.float32 and np.isfinite(value).all(), name
    # Voxel centres ± 0.75 voxel lie inside the cube, a little over its half-width.
    assert np.abs(g.positions).max() <= 0.5 + 0.75 / OCCUPANCY_RESOLUTION
    np.testing.assert_allclose(np.linalg.norm(g.rotations, axis=1), 1.0, atol=1e-5)
    assert np.exp(g.log_scales).min() >= 9e-4 * 0.999  # the 3D filter floor
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len(fractions) == 3 + 8 + 20


def test_seeds_reproduce_and_differ(tiny_generator: TrellisGenerator,
                                    cutout: np.ndarray) -> None:
    framed = tiny_generator.frame(cutout)
    runs = [tiny_generator(framed, params=FAST, seed=seed, on_progress=lambda f: None)
            for seed in (3, 3, 4)]
    first, again, other = (run.gaussians for run in runs)
    assert first is not None and again is not None and other is not None
    np.testing.assert_array_equal(first.positions, again.positions)
    np.testing.assert_array_equal(first.sh_dc, again.sh_dc)
    assert len(first) != len(other) or not np.array_equal(first.sh_dc, other.sh_dc)


@torch.inference_mode()
def test_oversampling_keeps_the_structure_with_fewest_voxels(
        tiny_generator: TrellisGenerator, cutout: np.ndarray) -> None:
    cond = tiny_generator.encode_image(tiny_generator.frame(cutout)[..., :3])
    params = TrellisParams(ss_steps=2)
    noise = tiny_generator.structure_noise(5, torch.Generator().manual_seed(1))
    coords, counts = tiny_generator.sample_structure(cond, params, noise)
    assert len(set(counts)) > 1
    assert coords.shape == (min(counts), 4) and (coords[:, 0] == 0).all()
    # Each noise grid alone gives the same structure: the kept one is the smallest.
    alone = [tiny_generator.sample_structure(cond, params, noise[i:i + 1]) for i in range(5)]
    assert [n[0] for _, n in alone] == counts
    smallest = int(np.argmin(counts))
    torch.testing.assert_close(coords, alone[smallest][0])


def test_all_empty_structures_fail_with_a_clear_code(tmp_path: Path, cutout: np.ndarray) -> None:
    write_tiny_trellis(tmp_path, seed=0, occupancy_bias=-1e4)
    generator = TrellisGenerator.load(models_dir=tmp_path, device="cpu")
    with pytest.raises(GenerateError) as info:
        generator(generator.frame(cutout), params=FAST, seed=0, on_progress=lambda f: None)
    assert info.value.code == "generate.empty_structure"


def test_cancel_from_progress_stops_the_call(tiny_generator: TrellisGenerator,
                                             cutout: np.ndarray) -> None:
    calls: list[float] = []

    def cancel_at_third(fraction: float) -> None:
        calls.append(fraction)
        if len(calls) == 3:
            raise Canceled("canceled")

    with pytest.raises(Canceled):
        tiny_generator(tiny_generator.frame(cutout), params=FAST, seed=0,
                       on_progress=cancel_at_third)
    assert len(calls) == 3


def test_params_forbid_unknown_keys_and_bad_intervals() -> None:
    assert TrellisParams().model_dump()["ss_cfg"] == 5.75
    with pytest.raises(ValidationError):
        TrellisParams.model_validate({"steps": 10})
    with pytest.raises(ValidationError):
        TrellisParams(ss_cfg_interval=(0.8, 0.2))
    with pytest.raises(ValidationError):
        TrellisParams(num_oversamples=0)
    params = TrellisParams.model_validate({"slat_cfg_interval": [0.1, 0.9], "slat_steps": 12})
    assert params.slat_settings(1e-5).cfg_interval == (0.1, 0.9)


def test_service_frame_is_y_up_front_plus_z() -> None:
    # TRELLIS: Z up, front towards -Y. A Gaussian above the centre and one in
    # front of it, both stretched along TRELLIS X and rotated 90° about Z.
    half = np.sqrt(0.5)
    g = GaussianTensors(
        positions=torch.tensor([[0.0, 0.0, 0.3], [0.0, -0.3, 0.0]]),
        sh_dc=torch.zeros(2, 3), opacity_logits=torch.zeros(2),
        log_scales=torch.log(torch.tensor([[0.2, 0.01, 0.01]] * 2)),
        rotations=torch.tensor([[half, 0.0, 0.0, half]] * 2))
    out = to_service_gaussians(g)
    np.testing.assert_allclose(out.positions, [[0, 0.3, 0], [0, 0, 0.3]], atol=1e-6)
    # The long axis, X rotated 90° about TRELLIS Z, is TRELLIS +Y, which is service -Z.
    long_axis = _rotate(out.rotations[0], np.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(long_axis, [0, 0, -1], atol=1e-6)


def _rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    matrix = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    return matrix @ v
