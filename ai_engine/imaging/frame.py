"""Framing: place a cut-out in a square the way a generator was trained to see it.

All functions take a straight-alpha RGBA uint8 cut-out ``(H, W, 4)`` and return
RGBA uint8; resampling goes through Pillow, whose RGBA resize premultiplies
internally (no dark fringes from transparent pixels' colours). An empty alpha
raises ``ImagingError`` ``imaging.no_object``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

from ai_engine.errors import ImagingError
from ai_engine.imaging.decode import RGBA

Box = tuple[int, int, int, int]
"""``(left, top, right, bottom)``, right and bottom exclusive."""

HUNYUAN_SIZE = 512
HUNYUAN_BORDER_RATIO = 0.15
TRELLIS_SIZE = 518
TRELLIS_CROP_SCALE = 1.2
TRELLIS_ALPHA_THRESHOLD = round(0.8 * 255)


def alpha_box(rgba: RGBA, *, threshold: int = 0) -> Box:
    """The bounding box of pixels with alpha above ``threshold``."""
    mask = rgba[..., 3] > threshold
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ImagingError("the cut-out is empty", code="imaging.no_object")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def frame_square(rgba: RGBA, *, size: int, border_ratio: float,
                 background: tuple[int, int, int] | None = None,
                 alpha_threshold: int = 0) -> RGBA:
    """Crop to the alpha box, scale so its long side fills ``(1 - border_ratio)`` of
    a ``size`` square, centre it there; optionally composite on ``background``.

    The alpha channel is kept in the result either way.
    """
    if not 0.0 <= border_ratio < 1.0:
        raise ValueError("border_ratio must be in [0, 1)")
    left, top, right, bottom = alpha_box(rgba, threshold=alpha_threshold)
    crop = Image.fromarray(np.ascontiguousarray(rgba[top:bottom, left:right]), "RGBA")
    width, height = crop.size
    target = max(1, round(size * (1.0 - border_ratio)))
    scale = target / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    crop = crop.resize(new_size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(crop, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    out = np.asarray(canvas, dtype=np.uint8).copy()
    if background is not None:
        out[..., :3] = _composite(out, background)
    return out


def frame_hunyuan(rgba: RGBA) -> RGBA:
    """Hunyuan3D-2's input: recentred in 512², border ratio 0.15, composited on
    white, alpha kept."""
    return frame_square(rgba, size=HUNYUAN_SIZE, border_ratio=HUNYUAN_BORDER_RATIO,
                        background=(255, 255, 255))


def frame_trellis(rgba: RGBA) -> RGBA:
    """TRELLIS's input: a square 1.2x the box of pixels with alpha > 0.8, centred on
    that box, resized to 518², RGB premultiplied by alpha (on black), alpha kept."""
    left, top, right, bottom = alpha_box(rgba, threshold=TRELLIS_ALPHA_THRESHOLD)
    centre_x, centre_y = (left + right) / 2.0, (top + bottom) / 2.0
    half = max(right - left, bottom - top) * TRELLIS_CROP_SCALE / 2.0
    # Pillow fills the part of a crop box outside the image with transparent black.
    box = (round(centre_x - half), round(centre_y - half),
           round(centre_x + half), round(centre_y + half))
    crop = Image.fromarray(np.ascontiguousarray(rgba), "RGBA").crop(box)
    crop = crop.resize((TRELLIS_SIZE, TRELLIS_SIZE), Image.Resampling.LANCZOS)
    out = np.asarray(crop, dtype=np.uint8).copy()
    out[..., :3] = _composite(out, (0, 0, 0))
    return out


def _composite(rgba: RGBA, background: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32)
    bg = np.asarray(background, dtype=np.float32)
    return np.asarray(np.rint(rgb * alpha + bg * (1.0 - alpha)), dtype=np.uint8)
