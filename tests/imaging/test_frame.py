from __future__ import annotations

import numpy as np
import pytest

from ai_engine.errors import ImagingError
from ai_engine.imaging.frame import alpha_box, frame_hunyuan, frame_square, frame_trellis


def _object(*, halo: bool = False) -> np.ndarray:
    """A 200x100 opaque red rectangle, off-centre in a 400x600 transparent canvas;
    optionally inside a faint (alpha 100) 20-pixel halo."""
    rgba = np.zeros((400, 600, 4), np.uint8)
    if halo:
        rgba[30:270, 40:460] = (0, 0, 255, 100)
    rgba[50:250, 60:160] = (255, 0, 0, 255)  # 200 tall, 100 wide
    return rgba


def _box(rgba: np.ndarray, threshold: int = 127) -> tuple[float, float, int, int]:
    left, top, right, bottom = alpha_box(rgba, threshold=threshold)
    return (left + right) / 2, (top + bottom) / 2, right - left, bottom - top


def test_hunyuan_framing() -> None:
    framed = frame_hunyuan(_object())
    assert framed.shape == (512, 512, 4) and framed.dtype == np.uint8
    cx, cy, width, height = _box(framed)
    assert abs(cx - 256) <= 1.5 and abs(cy - 256) <= 1.5
    assert abs(height - 512 * 0.85) <= 2 and abs(width - 512 * 0.85 / 2) <= 2
    assert (framed[256, 256] == (255, 0, 0, 255)).all()
    assert (framed[5, 5] == (255, 255, 255, 0)).all()  # white, alpha kept


def test_trellis_framing() -> None:
    framed = frame_trellis(_object(halo=True))
    assert framed.shape == (518, 518, 4)
    # The halo (alpha 100 < 0.8) does not count for the box; the opaque object is
    # 1/1.2 of the side, centred.
    cx, cy, width, height = _box(framed, threshold=204)
    assert abs(cx - 259) <= 1.5 and abs(cy - 259) <= 1.5
    assert abs(height - 518 / 1.2) <= 3 and abs(width - 518 / 1.2 / 2) <= 3
    assert (framed[259, 259, :3] == (255, 0, 0)).all()
    halo = framed[259, 259 + 150]  # inside the halo, right of the object
    assert halo[3] == 100 and abs(int(halo[2]) - round(255 * 100 / 255)) <= 1  # premultiplied
    assert (framed[2, 2] == 0).all()  # outside: black, transparent


def test_trellis_crop_past_the_edge_pads_transparent() -> None:
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[:, :] = (0, 255, 0, 255)  # object fills the frame: 1.2x crop runs past every edge
    framed = frame_trellis(rgba)
    assert (framed[3, 3] == 0).all() and (framed[259, 259] == (0, 255, 0, 255)).all()


def test_frame_square_generic() -> None:
    framed = frame_square(_object(), size=64, border_ratio=0.0)
    cx, _, width, height = _box(framed)
    assert height == 64 and width == 32 and cx == 32
    assert framed[0, 0, 3] == 0 and (framed[0, 0, :3] == 0).all()
    on_grey = frame_square(_object(), size=64, border_ratio=0.5, background=(128, 128, 128))
    assert _box(on_grey)[3] == 32
    assert (on_grey[0, 0] == (128, 128, 128, 0)).all()


@pytest.mark.parametrize("frame", [frame_hunyuan, frame_trellis])
def test_empty_is_no_object(frame: object) -> None:
    with pytest.raises(ImagingError) as caught:
        frame(np.zeros((50, 50, 4), np.uint8))  # type: ignore[operator]
    assert caught.value.code == "imaging.no_object"
