from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, features

from ai_engine.errors import ImagingError
from ai_engine.imaging.decode import decode, decode_image, has_meaningful_alpha, sniff_format
from tests.imaging.images import SAMPLES, encode, linear_rgb_icc, png_16bit, sample_bytes

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


# -- the corpus of real photos shipped with scikit-image ------------------------------

_CORPUS = sorted(p.name for p in SAMPLES.iterdir()
                 if p.suffix.lower() in (".png", ".jpg", ".gif", ".tif"))


@pytest.mark.parametrize("name", _CORPUS)
def test_real_photo_corpus(name: str) -> None:
    data = sample_bytes(name)
    if name.endswith(".tif"):  # TIFF is not an accepted upload format
        assert _code(data) == "imaging.unsupported_format"
        return
    with Image.open(SAMPLES / name) as reference:
        width, height = reference.size
    decoded = decode(data, max_pixels=MAX)
    assert decoded.rgba.shape == (height, width, 4) and decoded.rgba.dtype == np.uint8
    assert decoded.original_size == (width, height)
    assert decoded.rgba[..., :3].std() > 5  # real content, not a blank frame


def test_corpus_photo_keeps_its_colours() -> None:
    rgba = decode_image(sample_bytes("coffee.png"), max_pixels=MAX)
    with Image.open(SAMPLES / "coffee.png") as reference:
        assert np.array_equal(rgba[..., :3], np.asarray(reference.convert("RGB")))


# -- depths and modes -----------------------------------------------------------------

def test_16bit_rgb_rgba_and_grey_alpha_png() -> None:
    rgb = np.zeros((4, 5, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32896, 257
    assert (decode_image(png_16bit(rgb, colour_type=2), max_pixels=MAX)
            == (255, 128, 1, 255)).all()
    rgba = np.zeros((4, 5, 4), np.uint16)
    rgba[..., 0], rgba[..., 3] = 65535, 32896
    assert (decode_image(png_16bit(rgba, colour_type=6), max_pixels=MAX)
            == (255, 0, 0, 128)).all()
    grey_alpha = np.zeros((4, 5, 2), np.uint16)
    grey_alpha[..., 0], grey_alpha[..., 1] = 32896, 0
    decoded = decode_image(png_16bit(grey_alpha, colour_type=4), max_pixels=MAX)
    assert (decoded == (128, 128, 128, 0)).all()
    grey = np.full((4, 5), 65535, np.uint16)
    assert (decode_image(png_16bit(grey, colour_type=0), max_pixels=MAX) == 255).all()


def test_one_bit_png() -> None:
    image = Image.new("1", (8, 8), 0)
    image.paste(1, (0, 0, 4, 8))
    rgba = decode_image(encode(image), max_pixels=MAX)
    assert (rgba[:, :4, :3] == 255).all() and (rgba[:, 4:, :3] == 0).all()


def test_palette_png_with_alpha_palette() -> None:
    image = Image.new("RGBA", (6, 6), (0, 0, 255, 0))
    image.paste((255, 0, 0, 128), (0, 0, 3, 6))
    data = encode(image.quantize(colors=4, method=Image.Quantize.FASTOCTREE))
    assert Image.open(io.BytesIO(data)).mode == "P"
    rgba = decode_image(data, max_pixels=MAX)
    assert abs(int(rgba[2, 1, 3]) - 128) <= 2 and rgba[2, 1, 0] > 200
    assert rgba[2, 5, 3] == 0


def test_progressive_jpeg_and_draft() -> None:
    photo = Image.open(SAMPLES / "chelsea.png").convert("RGB")  # 451x300
    data = encode(photo, "JPEG", progressive=True, quality=90)
    full = decode_image(data, max_pixels=MAX)
    assert full.shape == (300, 451, 4)
    assert np.abs(full[..., :3].astype(int) - np.asarray(photo)).mean() < 4
    small = decode(data, max_pixels=MAX, max_side=200)
    assert max(small.rgba.shape[:2]) == 200 and small.original_size == (451, 300)


def test_cmyk_jpeg_with_exif_rotation() -> None:
    image = Image.new("CMYK", (40, 20), (0, 255, 255, 0))  # red
    image.paste((255, 255, 0, 0), (20, 0, 40, 20))  # blue right half
    exif = Image.Exif()
    exif[0x0112] = 8  # display = rotate 90° counter-clockwise
    decoded = decode(encode(image, "JPEG", exif=exif, quality=95), max_pixels=MAX)
    assert decoded.rgba.shape[:2] == (40, 20)
    top, bottom = decoded.rgba[5, 10], decoded.rgba[35, 10]
    assert top[2] > 150 and top[0] < 100  # the right (blue) half is now on top
    assert bottom[0] > 200 and bottom[2] < 60


def test_malformed_exif_is_ignored() -> None:
    data = bytearray(encode(Image.new("RGB", (8, 6), (0, 200, 0)), "JPEG",
                            exif=Image.Exif().tobytes() + b"\0" * 4))
    exif_at = data.find(b"Exif\0\0")
    data[exif_at + 6: exif_at + 14] = b"II*\0\xff\xff\xff\x7f"  # IFD offset past the end
    rgba = decode_image(bytes(data), max_pixels=MAX)
    assert rgba.shape == (6, 8, 4) and rgba[3, 3, 1] > 180


# -- colour management ----------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_icc_profile_converted_to_srgb(fmt: str) -> None:
    image = Image.new("RGB", (8, 8), (128, 0, 255))
    options: dict[str, object] = {"quality": 100} if fmt != "PNG" else {}
    if fmt == "WEBP":
        options["lossless"] = True
    rgba = decode_image(encode(image, fmt, icc_profile=linear_rgb_icc(), **options),
                        max_pixels=MAX)
    # Linear 0.5 is sRGB 0.735: the profile was applied, the extremes stay put.
    assert abs(int(rgba[4, 4, 0]) - 188) <= 2
    assert rgba[4, 4, 1] <= 2 and rgba[4, 4, 2] >= 253


def test_icc_conversion_keeps_alpha() -> None:
    image = Image.new("RGBA", (8, 8), (128, 128, 128, 77))
    rgba = decode_image(encode(image, icc_profile=linear_rgb_icc()), max_pixels=MAX)
    assert abs(int(rgba[0, 0, 0]) - 188) <= 2 and rgba[0, 0, 3] == 77


def test_unusable_icc_profile_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    image = Image.new("RGB", (8, 8), (128, 0, 255))
    rgba = decode_image(encode(image, icc_profile=b"not a profile" * 20), max_pixels=MAX)
    assert (rgba[0, 0] == (128, 0, 255, 255)).all()
    assert any("ICC" in record.getMessage() for record in caplog.records)


def test_srgb_profile_changes_nothing() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.open(SAMPLES / "chelsea.png").convert("RGB")
    rgba = decode_image(encode(image, icc_profile=srgb), max_pixels=MAX)
    assert np.array_equal(rgba[..., :3], np.asarray(image))


# -- animations and other containers --------------------------------------------------

@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_first_frame_of_animated_webp_and_apng(fmt: str) -> None:
    frames = [Image.new("RGBA", (10, 8), colour)
              for colour in [(255, 0, 0, 255), (0, 0, 255, 255), (0, 255, 0, 255)]]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40,
                  **({"lossless": True} if fmt == "WEBP" else {}))
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    rgba = decode_image(data, max_pixels=MAX)
    assert rgba[4, 4, 0] > 200 and rgba[4, 4, 2] < 60


def test_real_animated_gif_first_frame() -> None:
    data = sample_bytes("no_time_for_that_tiny.gif")
    with Image.open(io.BytesIO(data)) as reference:
        assert getattr(reference, "n_frames", 1) > 1
        first = np.asarray(reference.convert("RGBA"))
    assert np.array_equal(decode_image(data, max_pixels=MAX), first)


def test_heic_through_plugin() -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    data = encode(Image.new("RGB", (32, 24), (220, 30, 30)), "HEIF", quality=95)
    assert sniff_format(data) == "heic"
    rgba = decode_image(data, max_pixels=MAX)
    assert rgba.shape == (24, 32, 4) and rgba[12, 16, 0] > 180 and rgba[12, 16, 1] < 80


def test_avif() -> None:
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    data = encode(Image.new("RGB", (32, 24), (30, 30, 220)), "AVIF", quality=95)
    assert sniff_format(data) == "avif"
    rgba = decode_image(data, max_pixels=MAX)
    assert rgba.shape == (24, 32, 4) and rgba[12, 16, 2] > 180


# -- caps and hostile files -----------------------------------------------------------

def test_byte_cap() -> None:
    data = encode(Image.new("RGB", (10, 10)))
    assert _code(data, max_bytes=len(data) - 1) == "imaging.too_large"
    assert decode_image(data, max_pixels=MAX, max_bytes=len(data)).shape == (10, 10, 4)


def test_frame_cap() -> None:
    frames = [Image.new("RGB", (4, 4), (i * 40, 0, 0)) for i in range(5)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=20)
    assert _code(data, max_frames=4) == "imaging.too_many_frames"
    assert decode_image(data, max_pixels=MAX, max_frames=5).shape == (4, 4, 4)


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (8, 8)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_pixel_bombs_in_every_format_refused_from_the_header() -> None:
    gif = bytearray(encode(Image.new("P", (8, 8)), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    started = time.perf_counter()
    assert _code(_jpeg_claiming(60000, 60000)) == "imaging.too_many_pixels"
    assert _code(bytes(gif)) == "imaging.too_many_pixels"
    assert _code(_png_claiming(65535, 65535), max_pixels=10**12) == "imaging.too_many_pixels"
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_truncated_files_of_each_format(fmt: str) -> None:
    data = encode(Image.effect_noise((64, 64), 60).convert("RGB"), fmt)
    assert _code(data[: len(data) // 2]) == "imaging.decode_failed"


def test_zero_sized_frames() -> None:
    gif = bytearray(encode(Image.new("P", (8, 8)), "GIF"))
    gif[6:10] = struct.pack("<HH", 0, 8)
    assert _code(bytes(gif)) == "imaging.empty"
    assert _code(_jpeg_claiming(0, 8)) in ("imaging.empty", "imaging.decode_failed")
