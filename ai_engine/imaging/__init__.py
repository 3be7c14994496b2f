"""Image preparation: decode, [edit], cut out, frame.

``prepare(data, max_pixels=..., segmenter=..., editor=...)`` is the stage the
executor calls: bytes in, a straight-alpha RGBA :class:`Cutout` out. Each
generator then frames the cut-out itself (:mod:`ai_engine.imaging.frame`).

The models are built once per process, off the event loop:
:func:`~ai_engine.imaging.segment.load_segmenter` (learned background removal,
or the classical fallback) and :func:`~ai_engine.imaging.edit.load_editor`
(Qwen-Image-Edit, optional). Per-job options are :class:`ImagingParams`.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ai_engine.imaging.cutout import Method, cut_out
from ai_engine.imaging.decode import (
    DEFAULT_MAX_FRAMES,
    RGBA,
    Decoded,
    decode,
    decode_image,
    has_meaningful_alpha,
    sniff_format,
)
from ai_engine.imaging.frame import frame_hunyuan, frame_square, frame_trellis
from ai_engine.imaging.params import ImagingParams, split_params, wants_edit
from ai_engine.imaging.segment import Segmenter, load_segmenter

if TYPE_CHECKING:
    from ai_engine.imaging.edit import Editor, ProgressFn

__all__ = [
    "RGBA",
    "Cutout",
    "Decoded",
    "ImagingParams",
    "Method",
    "Segmenter",
    "cut_out",
    "decode",
    "decode_image",
    "frame_hunyuan",
    "frame_square",
    "frame_trellis",
    "has_meaningful_alpha",
    "load_segmenter",
    "png_bytes",
    "prepare",
    "sniff_format",
    "split_params",
    "wants_edit",
]

logger = logging.getLogger(__name__)

# Every generator frames to about 512²; a larger working copy only costs time.
DEFAULT_MAX_SIDE = 2048
# Where a transparent upload is flattened before editing: mid grey contrasts with
# both light and dark objects, and the edit repaints the background anyway.
_EDIT_BACKGROUND = (128, 128, 128)


@dataclass(frozen=True)
class Cutout:
    """A prepared image: the cut-out, how it was made, and the edited image if any."""

    rgba: RGBA
    """``(H, W, 4)`` uint8, straight alpha; at most ``max_side`` on its long side."""
    method: Method
    """``"alpha"`` (the image's own alpha) or the background removal that ran:
    ``"classical"``, ``"rembg"``, ``"transformers"``."""
    original_size: tuple[int, int]
    """``(width, height)`` of the decoded image after EXIF orientation, before shrinking."""
    edited: RGBA | None = None
    """The edit stage's output, ``(H, W, 3)`` uint8 RGB, when the job was edited."""

    def cutout_png(self) -> bytes:
        """The cut-out as an RGBA PNG (to store beside the asset or return as base64)."""
        return png_bytes(self.rgba)

    def edited_png(self) -> bytes | None:
        """The edited image as an RGB PNG, or ``None`` when the job was not edited."""
        return None if self.edited is None else png_bytes(self.edited)


def png_bytes(pixels: RGBA) -> bytes:
    """Encode ``(H, W, 3|4)`` uint8 pixels as PNG (fast compression: these are
    intermediates, written once and read rarely)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def prepare(data: bytes, *, max_pixels: int, max_side: int = DEFAULT_MAX_SIDE,
            max_bytes: int | None = None, max_frames: int = DEFAULT_MAX_FRAMES,
            segmenter: Segmenter | None = None, editor: Editor | None = None,
            seed: int = 0, on_progress: ProgressFn | None = None) -> Cutout:
    """Decode ``data``, edit it when ``editor`` is given, and cut the object out.

    Blocking (CPU, and the GPU for learned models): run it in a worker pool.
    ``segmenter`` defaults to the classical cut-out; ``editor`` (given only for
    jobs that want the edit) runs before the cut-out with ``seed``, reporting
    its steps to ``on_progress(fraction)``, which may raise to cancel.

    Raises ``ImagingError`` (``imaging.empty``, ``imaging.too_large``,
    ``imaging.unsupported_format``, ``imaging.too_many_pixels``,
    ``imaging.too_many_frames``, ``imaging.decode_failed``, ``imaging.no_object``).
    """
    decoded = decode(data, max_pixels=max_pixels, max_side=max_side, max_bytes=max_bytes,
                     max_frames=max_frames)
    rgba, edited = decoded.rgba, None
    if editor is not None:
        edited = editor(_flatten(rgba), seed=seed, on_progress=on_progress)
        rgba = np.dstack([edited, np.full(edited.shape[:2], 255, np.uint8)])
    cut, method = cut_out(rgba, segmenter=segmenter)
    logger.info("prepared a %dx%d %s image%s with the %s cut-out", *decoded.original_size,
                decoded.format, " (edited)" if edited is not None else "", method)
    return Cutout(rgba=cut, method=method, original_size=decoded.original_size,
                  edited=edited)


def _flatten(rgba: RGBA) -> RGBA:
    """RGB of ``rgba`` composited on :data:`_EDIT_BACKGROUND` (the edit model takes RGB)."""
    if not has_meaningful_alpha(rgba):
        return np.ascontiguousarray(rgba[..., :3])
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    background = np.asarray(_EDIT_BACKGROUND, np.float32)
    rgb = rgba[..., :3].astype(np.float32) * alpha + background * (1.0 - alpha)
    return np.asarray(np.rint(rgb), dtype=np.uint8)
