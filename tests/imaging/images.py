"""Test images: skimage's bundled sample files (read from disk, never downloaded)
and small synthetic scenes whose true mask is known."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import skimage
from PIL import Image

SAMPLES = Path(skimage.__file__).parent / "data"


def sample_bytes(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def disc_scene(*, size: tuple[int, int] = (300, 400), centre: tuple[int, int] = (140, 220),
               radius: int = 80, colour: tuple[int, int, int] = (200, 40, 30),
               background: tuple[int, int, int] = (235, 235, 230), noise: float = 4.0,
               seed: int = 0) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """An opaque RGBA photo-like scene: a disc on a plain noisy background, and its true mask."""
    height, width = size
    yy, xx = np.mgrid[:height, :width]
    truth = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    rng = np.random.default_rng(seed)
    rgb = np.where(truth[..., None], np.array(colour, float), np.array(background, float))
    # Shading on the object and a soft vignette on the background, like a real photo.
    rgb = rgb * (1.0 - 0.25 * (yy / height))[..., None]
    rgb += rng.normal(0.0, noise, rgb.shape)
    rgba = np.empty((height, width, 4), np.uint8)
    rgba[..., :3] = np.clip(rgb, 0, 255).astype(np.uint8)
    rgba[..., 3] = 255
    return rgba, truth


def png_16bit(values: npt.NDArray[np.uint16], *, colour_type: int) -> bytes:
    """A 16-bit PNG written directly (Pillow cannot write 16-bit colour):
    ``colour_type`` 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA; ``values`` ``(H, W[, C])``."""
    height, width = values.shape[:2]
    rows = values.reshape(height, -1).astype(">u2")
    raw = b"".join(b"\0" + rows[y].tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def linear_rgb_icc() -> bytes:
    """An ICC v2 display profile with sRGB's primaries and a linear (gamma 1.0) curve.

    Pillow can only create sRGB, Lab and XYZ profiles; this one makes the ICC
    conversion visible: linear 0.5 (pixel 128) is sRGB 0.735 (pixel 188).
    """
    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    text = b"Linear RGB test profile\0"
    desc = (b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text
            + b"\0" * 4 + b"\0" * 4 + b"\0" * 3 + b"\0" * 67)
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, 0x0100) + b"\0\0"
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)), (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
            (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = [], b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table.append(signature + struct.pack(">II", offset + len(body), len(data)))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000)
              + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp" + b"\0" * 24
              + struct.pack(">I", 0) + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(table) + body
