from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from PIL import Image

from ai_engine.errors import ImagingError
from ai_engine.imaging import Cutout, prepare
from ai_engine.imaging.cutout import cut_out
from ai_engine.imaging.decode import decode_image
from tests.imaging.images import disc_scene, encode, sample_bytes

MAX = 64_000_000


def _mask(rgba: np.ndarray) -> np.ndarray:
    return np.asarray(rgba[..., 3] > 127)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_coffee_cup_is_isolated() -> None:
    rgba = decode_image(sample_bytes("coffee.png"), max_pixels=MAX)  # 600x400, cup on a table
    cut, method = cut_out(rgba)
    assert method == "classical"
    mask = _mask(cut)
    assert 0.35 < mask.mean() < 0.6  # cup and saucer, not the table
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - 277) < 25 and abs(ys.mean() - 210) < 25
    # The saucer spans x 75..480, y 60..390; the cup's rim reaches y 15.
    assert abs(xs.min() - 77) < 15 and abs(xs.max() - 479) < 15
    assert abs(ys.min() - 17) < 15 and ys.max() > 370
    assert mask[150, 290] and mask[300, 120] and mask[280, 360]  # crema, saucer, spoon
    for y, x in [(5, 5), (5, 590), (390, 10), (390, 590), (200, 20), (200, 560)]:
        assert not mask[y, x], (y, x)  # table and the dark corner
    assert np.array_equal(cut[..., :3], rgba[..., :3])  # colours untouched (straight alpha)


@pytest.mark.parametrize("scene", [
    {},
    {"noise": 12.0},
    {"radius": 20},
    {"background": (60, 60, 70), "colour": (90, 90, 100)},
    {"centre": (250, 220)},  # cut by the bottom edge
])
def test_synthetic_scenes(scene: dict[str, object]) -> None:
    rgba, truth = disc_scene(**scene)  # type: ignore[arg-type]
    cut, method = cut_out(rgba)
    assert method == "classical"
    assert _iou(_mask(cut), truth) > 0.93


def test_soft_edge() -> None:
    rgba, _ = disc_scene()
    alpha = cut_out(rgba)[0][..., 3]
    partial = (alpha > 0) & (alpha < 255)
    assert 0 < partial.sum() < 0.05 * alpha.size  # a thin ramp, not a blur


@pytest.mark.parametrize("noise", [0.0, 6.0])
def test_flat_image_has_no_object(noise: float) -> None:
    rgb = np.full((200, 300, 3), (120, 180, 90), float)
    rgb += np.random.default_rng(1).normal(0, noise, rgb.shape)
    rgba = np.dstack([np.clip(rgb, 0, 255), np.full((200, 300), 255)]).astype(np.uint8)
    with pytest.raises(ImagingError) as caught:
        cut_out(rgba)
    assert caught.value.code == "imaging.no_object"


def test_given_alpha_is_used_as_is() -> None:
    # logo.png ships as RGBA with a fully opaque alpha; give it a real cut-out alpha.
    rgba = decode_image(sample_bytes("logo.png"), max_pixels=MAX)
    yy, xx = np.mgrid[: rgba.shape[0], : rgba.shape[1]]
    rgba[..., 3] = np.where((yy - 250) ** 2 + (xx - 250) ** 2 < 230**2, 255, 0)
    cut, method = cut_out(rgba)
    assert method == "alpha"
    assert np.array_equal(cut, rgba)


def test_opaque_logo_is_cut_out_from_its_white_background() -> None:
    rgba = decode_image(sample_bytes("logo.png"), max_pixels=MAX)
    assert (rgba[..., 3] == 255).all()
    cut, method = cut_out(rgba)
    assert method == "classical"
    mask = _mask(cut)
    assert 0.6 < mask.mean() < 0.78  # the disc, r ≈ 240 of 500
    assert not mask[5, 5] and not mask[495, 495]
    assert mask[150, 150] and mask[350, 350] and mask[250, 100] and mask[250, 400]


def test_fully_transparent_is_no_object() -> None:
    rgba = np.zeros((50, 50, 4), np.uint8)
    with pytest.raises(ImagingError) as caught:
        cut_out(rgba)
    assert caught.value.code == "imaging.no_object"


def test_nearly_opaque_alpha_falls_back_to_classical() -> None:
    rgba, truth = disc_scene()
    rgba[:20, :20, 3] = 0  # a transparent corner (rounded-corner screenshot), 0.3 % of pixels
    cut, method = cut_out(rgba)
    assert method == "classical"
    assert _iou(_mask(cut), truth) > 0.95


def test_speed_1024() -> None:
    rgba = decode_image(sample_bytes("coffee.png"), max_pixels=MAX)
    big = np.asarray(Image.fromarray(rgba).resize((1024, 1024)))
    cut_out(big)
    started = time.perf_counter()
    cut_out(big)
    assert time.perf_counter() - started < 0.6  # ~0.1 s on one core; generous for CI


def test_prepare(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ai_engine.imaging"):
        prepared = prepare(sample_bytes("coffee.png"), max_pixels=MAX)
    assert isinstance(prepared, Cutout)
    assert prepared.method == "classical"
    assert prepared.original_size == (600, 400)
    assert prepared.rgba.shape == (400, 600, 4)
    assert any("classical" in record.getMessage() for record in caplog.records)


def test_prepare_shrinks_large_images() -> None:
    rgba, _ = disc_scene(size=(1500, 3000), centre=(700, 1500), radius=400)
    data = encode(Image.fromarray(rgba[..., :3]), "JPEG")
    prepared = prepare(data, max_pixels=MAX, max_side=1000)
    assert prepared.original_size == (3000, 1500)
    assert prepared.rgba.shape[:2] == (500, 1000)
