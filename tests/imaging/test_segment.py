"""Learned background removal: each path runs its real loading and inference code
on a tiny model written by the test."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ai_engine.config import Settings
from ai_engine.errors import ImagingError, SetupError
from ai_engine.imaging import prepare
from ai_engine.imaging.cutout import cut_out
from ai_engine.imaging.frame import alpha_box, frame_hunyuan, frame_trellis
from ai_engine.imaging.segment import (
    ClassicalSegmenter,
    RembgSegmenter,
    find_model,
    load_segmenter,
    rembg_session_for,
)
from tests.imaging.images import disc_scene, encode
from tests.imaging.tiny_models import write_onnx_segmenter, write_transformers_segmenter

# The learned paths need the ``imaging`` extra.
for _module in ("onnx", "onnxruntime", "rembg", "transformers", "torch"):
    pytest.importorskip(_module)

MAX = 64_000_000


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _settings(models_dir: Path, **options: object) -> Settings:
    return Settings(models_dir=models_dir, cutout_device="cpu", **options)  # type: ignore[arg-type]


def _check_framing(cut: np.ndarray) -> None:
    """Each generator's framing puts the found disc where it expects the object."""
    hunyuan = frame_hunyuan(cut)
    left, top, right, bottom = alpha_box(hunyuan, threshold=127)
    assert abs((left + right) / 2 - 256) <= 3 and abs((top + bottom) / 2 - 256) <= 3
    # The box includes the soft edge, a few pixels wider than the half-alpha one.
    assert abs(max(right - left, bottom - top) - 512 * 0.85) <= 12
    trellis = frame_trellis(cut)
    left, top, right, bottom = alpha_box(trellis, threshold=204)
    assert abs((left + right) / 2 - 259) <= 3 and abs((top + bottom) / 2 - 259) <= 3
    assert abs(max(right - left, bottom - top) - 518 / 1.2) <= 8
    assert (trellis[2, 2] == 0).all()  # outside: black, transparent


# -- rembg ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("models")
    write_onnx_segmenter(models / "rembg" / "my-model.onnx")
    write_onnx_segmenter(models / "rembg" / "birefnet-general.onnx", probabilities=False)
    return models


def test_rembg_custom_session_finds_the_object(onnx_models: Path) -> None:
    segmenter = RembgSegmenter(onnx_models / "rembg" / "my-model.onnx")
    assert "u2net_custom" in segmenter.description  # 320², ImageNet statistics
    rgba, truth = disc_scene()
    cut = segmenter(rgba)
    assert cut.shape == rgba.shape and cut.dtype == np.uint8
    assert np.array_equal(cut[..., :3], rgba[..., :3])  # straight alpha: colours untouched
    alpha = cut[..., 3]
    assert alpha.min() == 0 and alpha.max() == 255
    assert _iou(alpha > 127, truth) > 0.9
    _check_framing(cut)


def test_rembg_named_session_is_chosen_by_file_name(onnx_models: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    home = tmp_path / "rembg-home"
    monkeypatch.setenv("U2NET_HOME", str(home))
    monkeypatch.setenv("REMBG_HOME", str(home))
    path = onnx_models / "rembg" / "birefnet-general.onnx"
    assert rembg_session_for(path) == "birefnet-general"
    segmenter = load_segmenter(_settings(onnx_models, cutout="rembg"))
    assert segmenter.method == "rembg" and "birefnet-general" in segmenter.description
    rgba, truth = disc_scene(size=(240, 320), centre=(120, 150), radius=60)
    assert _iou(segmenter(rgba)[..., 3] > 127, truth) > 0.9  # 1024² input, sigmoid
    assert not home.exists()  # rembg never looked in (or downloaded to) its own home


def test_rembg_session_for_unknown_and_unsuitable_names() -> None:
    assert rembg_session_for(Path("u2net.onnx")) == "u2net"
    assert rembg_session_for(Path("model.onnx")) == "u2net_custom"
    assert rembg_session_for(Path("sam.onnx")) == "u2net_custom"


def test_rembg_refuses_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "rembg" / "u2net.onnx"
    path.parent.mkdir()
    path.write_bytes(b"not an onnx file")
    with pytest.raises(SetupError) as caught:
        RembgSegmenter(path)
    assert caught.value.code == "setup.model_load_failed"


# -- transformers -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def transformers_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("models")
    write_transformers_segmenter(models / "RMBG-2.0", known_answer=True)
    write_transformers_segmenter(models / "random-seg", seed=3)
    write_transformers_segmenter(models / "BiRefNet", quirky=True, known_answer=True)
    return models


def test_transformers_segmenter_finds_the_object(transformers_models: Path) -> None:
    segmenter = load_segmenter(_settings(transformers_models, cutout_size_px=256))
    assert segmenter.method == "transformers" and "RMBG-2.0" in segmenter.description
    rgba, truth = disc_scene()
    cut = segmenter(rgba)
    assert cut.shape == rgba.shape and np.array_equal(cut[..., :3], rgba[..., :3])
    assert _iou(cut[..., 3] > 127, truth) > 0.9
    _check_framing(cut)


def test_random_transformers_model_round_trips_through_its_folder(
        transformers_models: Path) -> None:
    import torch

    from ai_engine.imaging.segment_transformers import TransformersSegmenter, final_logits

    folder = transformers_models / "random-seg"
    segmenter = TransformersSegmenter.load(folder, device="cpu", size_px=128)
    rgba = disc_scene(size=(90, 150))[0]
    mask = segmenter.mask(rgba)
    assert mask.shape == (90, 150) and mask.dtype == np.uint8
    # The reloaded weights are the saved ones: rebuild the same model in memory.
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    model_class: Any = get_class_from_dynamic_module("tiny_seg.TinySegModel", str(folder))
    torch.manual_seed(3)
    original = model_class(config=model_class.config_class(hidden_size=8)).eval()
    batch = torch.rand(1, 3, 128, 128)
    with torch.inference_mode():
        assert torch.allclose(final_logits(original(batch)), final_logits(segmenter.model(batch)))


def test_birefnet_style_code_loads_through_the_fallback(
        transformers_models: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ai_engine.imaging"):
        segmenter = load_segmenter(_settings(transformers_models, cutout="transformers",
                                             cutout_model="BiRefNet", cutout_size_px=256))
    assert any("all_tied_weights_keys" in record.getMessage() for record in caplog.records)
    rgba, truth = disc_scene(centre=(200, 150), radius=70)
    assert _iou(segmenter(rgba)[..., 3] > 127, truth) > 0.9


def test_transformers_folder_with_wrong_weights_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = write_transformers_segmenter(tmp_path / "BiRefNet", quirky=True)
    state = load_file(folder / "model.safetensors")
    state.pop(next(iter(state)))
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SetupError) as caught:
        load_segmenter(_settings(tmp_path, cutout="transformers"))
    assert caught.value.code == "setup.model_load_failed"


# -- choosing the method ----------------------------------------------------------------

def test_auto_without_weights_is_classical(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ai_engine.imaging"):
        segmenter = load_segmenter(_settings(tmp_path))
    assert isinstance(segmenter, ClassicalSegmenter)
    assert any("classical" in record.getMessage() for record in caplog.records)


def test_auto_prefers_transformers_then_rembg(tmp_path: Path) -> None:
    write_onnx_segmenter(tmp_path / "rembg" / "u2net.onnx")
    write_onnx_segmenter(tmp_path / "rembg" / "isnet-general-use.onnx")
    assert find_model(_settings(tmp_path)) == (
        "rembg", tmp_path / "rembg" / "isnet-general-use.onnx")
    (tmp_path / "BiRefNet").mkdir()
    (tmp_path / "BiRefNet" / "config.json").write_text("{}")
    assert find_model(_settings(tmp_path)) == ("transformers", tmp_path / "BiRefNet")
    assert find_model(_settings(tmp_path, cutout="rembg")) == (
        "rembg", tmp_path / "rembg" / "isnet-general-use.onnx")
    assert find_model(_settings(tmp_path, cutout="classical")) is None


@pytest.mark.parametrize("options", [
    {"cutout": "rembg"},
    {"cutout": "transformers"},
    {"cutout_model": "rembg/missing.onnx"},
])
def test_missing_models_are_a_setup_error(tmp_path: Path, options: dict[str, str]) -> None:
    with pytest.raises(SetupError) as caught:
        load_segmenter(_settings(tmp_path, **options))
    assert caught.value.code == "setup.model_missing"


def test_named_model_of_the_other_kind_is_refused(onnx_models: Path) -> None:
    with pytest.raises(SetupError):
        find_model(_settings(onnx_models, cutout="transformers",
                             cutout_model="rembg/my-model.onnx"))


# -- through prepare --------------------------------------------------------------------

def test_prepare_with_a_learned_segmenter(onnx_models: Path) -> None:
    segmenter = RembgSegmenter(onnx_models / "rembg" / "my-model.onnx")
    rgba, truth = disc_scene()
    prepared = prepare(encode(Image.fromarray(rgba[..., :3])), max_pixels=MAX,
                       segmenter=segmenter)
    assert prepared.method == "rembg"
    assert _iou(prepared.rgba[..., 3] > 127, truth) > 0.9
    png = Image.open(io.BytesIO(prepared.cutout_png()))
    assert png.mode == "RGBA" and np.array_equal(np.asarray(png), prepared.rgba)


def test_meaningful_alpha_skips_the_segmenter(onnx_models: Path) -> None:
    segmenter = RembgSegmenter(onnx_models / "rembg" / "my-model.onnx")
    rgba, truth = disc_scene()
    rgba[..., 3] = np.where(truth, 255, 0)
    rgba[..., :3] = 30  # a model run would find nothing here
    cut, method = cut_out(rgba, segmenter=segmenter)
    assert method == "alpha" and np.array_equal(cut, rgba)


@pytest.mark.parametrize("colour", [(235, 235, 230), (200, 40, 30)])
def test_learned_mask_that_is_empty_or_full_is_no_object(transformers_models: Path,
                                                          colour: tuple[int, ...]) -> None:
    segmenter = load_segmenter(_settings(transformers_models, cutout_size_px=128))
    flat = np.empty((100, 120, 4), np.uint8)
    flat[...] = (*colour, 255)  # all background, then all object
    with pytest.raises(ImagingError) as caught:
        segmenter(flat)
    assert caught.value.code == "imaging.no_object"
