"""Image preparation: decode, cut out, frame.

``prepare(data, max_pixels=...)`` is the stage the executor calls: bytes in,
a straight-alpha RGBA :class:`Cutout` out. Each generator then frames the
cut-out itself (:mod:`ai_engine.imaging.frame`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ai_engine.imaging.cutout import Method, cut_out
from ai_engine.imaging.decode import (
    RGBA,
    Decoded,
    decode,
    decode_image,
    has_meaningful_alpha,
    sniff_format,
)
from ai_engine.imaging.frame import frame_hunyuan, frame_square, frame_trellis

__all__ = [
    "RGBA",
    "Cutout",
    "Decoded",
    "Method",
    "cut_out",
    "decode",
    "decode_image",
    "frame_hunyuan",
    "frame_square",
    "frame_trellis",
    "has_meaningful_alpha",
    "prepare",
    "sniff_format",
]

logger = logging.getLogger(__name__)

# Every generator frames to about 512²; a larger working copy only costs time.
DEFAULT_MAX_SIDE = 2048


@dataclass(frozen=True)
class Cutout:
    """A prepared image: the cut-out and how it was made."""

    rgba: RGBA
    """``(H, W, 4)`` uint8, straight alpha; at most ``max_side`` on its long side."""
    method: Method
    """``"alpha"`` (the image's own alpha) or ``"classical"`` (background removal)."""
    original_size: tuple[int, int]
    """``(width, height)`` of the decoded image after EXIF orientation, before shrinking."""


def prepare(data: bytes, *, max_pixels: int, max_side: int = DEFAULT_MAX_SIDE) -> Cutout:
    """Decode ``data`` and cut the object out. CPU-bound: run it in a worker pool.

    Raises ``ImagingError`` (``imaging.unsupported_format``, ``imaging.too_many_pixels``,
    ``imaging.decode_failed``, ``imaging.empty``, ``imaging.no_object``).
    """
    decoded = decode(data, max_pixels=max_pixels, max_side=max_side)
    cut, method = cut_out(decoded.rgba)
    logger.info("prepared a %dx%d %s image with the %s cut-out",
                *decoded.original_size, decoded.format, method)
    return Cutout(rgba=cut, method=method, original_size=decoded.original_size)
