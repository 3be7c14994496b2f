from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from ai_engine.errors import ImagingError
from ai_engine.imaging.decode import decode, decode_image, has_meaningful_alpha, sniff_format
from tests.imaging.images import encode, sample_bytes

MAX = 64_000_000


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` (no such pixel data follows)."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    data[16:20] = struct.pack(">I", width)
    data[20:24] = struct.pack(">I", height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _code(data: bytes, **options: int) -> str:
    with pytest.raises(ImagingError) as caught:
        decode_image(data, max_pixels=options.pop("max_pixels", MAX), **options)
    return caught.value.code


def test_rgb_png_becomes_opaque_rgba() -> None:
    rgba = decode_image(encode(Image.new("RGB", (5, 3), (10, 20, 30))), max_pixels=MAX)
    assert rgba.shape == (3, 5, 4) and rgba.dtype == np.uint8
    assert (rgba == [10, 20, 30, 255]).all()
    assert not has_meaningful_alpha(rgba)


def test_palette_with_transparency() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (0, 0, 2, 4))
    rgba = decode_image(encode(image, transparency=0), max_pixels=MAX)
    assert (rgba[:, :2] == [0, 255, 0, 255]).all()
    assert (rgba[:, 2:, 3] == 0).all()
    assert has_meaningful_alpha(rgba)


@pytest.mark.parametrize(("mode", "value", "expected"), [
    ("L", 77, (77, 77, 77, 255)),
    ("LA", (77, 100), (77, 77, 77, 100)),
    ("I;16", 65535, (255, 255, 255, 255)),
    ("I;16", 32896, (128, 128, 128, 255)),  # 16-bit grey is scaled, not clipped
])
def test_grey_modes(mode: str, value: int | tuple[int, int],
                    expected: tuple[int, int, int, int]) -> None:
    rgba = decode_image(encode(Image.new(mode, (3, 2), value)), max_pixels=MAX)
    assert (rgba == expected).all()


def test_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    rgba = decode_image(data, max_pixels=MAX)
    assert rgba.shape == (16, 16, 4)
    assert rgba[8, 8, 0] > 200 and rgba[8, 8, 1] < 60 and rgba[8, 8, 2] < 60  # red


def test_exif_orientation_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = rotate 90° clockwise
    data = encode(image, "JPEG", exif=exif, quality=95)
    decoded = decode(data, max_pixels=MAX)
    assert decoded.rgba.shape[:2] == (40, 20)
    assert decoded.original_size == (20, 40)
    top, bottom = decoded.rgba[5, 10], decoded.rgba[35, 10]
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_first_frame_of_animation() -> None:
    frames = [Image.new("RGB", (6, 6), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    rgba = decode_image(data, max_pixels=MAX)
    assert rgba[3, 3, 0] > 200 and rgba[3, 3, 2] < 60


@pytest.mark.parametrize("fmt", ["WEBP", "JPEG", "PNG", "GIF"])
def test_formats(fmt: str) -> None:
    data = encode(Image.new("RGB", (12, 10), (0, 128, 255)), fmt)
    assert sniff_format(data) == fmt.lower()
    rgba = decode_image(data, max_pixels=MAX)
    assert rgba.shape == (10, 12, 4)
    assert abs(int(rgba[5, 6, 2]) - 255) < 8


def test_decompression_bomb_refused_from_header_fast() -> None:
    started = time.perf_counter()
    assert _code(_png_claiming(30000, 30000)) == "imaging.too_many_pixels"
    assert _code(_png_claiming(10000, 10000)) == "imaging.too_many_pixels"  # over our cap only
    assert time.perf_counter() - started < 0.5


def test_pixel_cap_is_the_callers() -> None:
    data = encode(Image.new("RGB", (100, 100)))
    assert _code(data, max_pixels=9_999) == "imaging.too_many_pixels"
    assert decode_image(data, max_pixels=10_000).shape == (100, 100, 4)


def test_truncated_and_garbage() -> None:
    png = encode(Image.effect_noise((64, 64), 50).convert("RGB"))
    assert _code(png[: len(png) // 2]) == "imaging.decode_failed"
    assert _code(png[:8] + b"\0" * 100) == "imaging.decode_failed"
    jpeg = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    assert _code(jpeg[: len(jpeg) // 2]) == "imaging.decode_failed"


def test_not_an_image() -> None:
    assert _code(b"<html></html>") == "imaging.unsupported_format"


def test_zero_size() -> None:
    assert _code(b"") == "imaging.empty"
    assert _code(_png_claiming(0, 10)) == "imaging.empty"


def test_max_side_shrinks_jpeg_through_draft() -> None:
    decoded = decode(sample_bytes("rocket.jpg"), max_pixels=MAX, max_side=200)
    assert max(decoded.rgba.shape[:2]) == 200
    assert decoded.original_size == (640, 427)
    assert decoded.format == "jpeg"


def test_meaningful_alpha() -> None:
    rgba = np.full((100, 100, 4), 255, np.uint8)
    assert not has_meaningful_alpha(rgba)
    rgba[:50, :50, 3] = 0
    assert has_meaningful_alpha(rgba)
