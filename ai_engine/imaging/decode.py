"""Image bytes -> RGBA pixels, with the checks that keep hostile files harmless.

Formats: PNG (8/16-bit, palette, grey+alpha, APNG), JPEG (CMYK, progressive),
WebP, GIF (animations give their first frame), AVIF where Pillow has it built in or
the ``pillow-avif-plugin`` is installed, HEIC where ``pillow-heif`` is installed.
EXIF orientation is applied and an embedded ICC profile is converted to sRGB.

Hostile input is refused before pixels are decoded: the byte count, the pixel
count read from the header (decompression bombs) and the frame count each have a
cap. Every refusal is an ``ImagingError`` with a stable code:

    imaging.empty               0 bytes, or a header declaring 0 pixels
    imaging.too_large           more bytes than ``max_bytes``
    imaging.unsupported_format  not one of the formats above (or its plugin is missing)
    imaging.too_many_pixels     more pixels than ``max_pixels``
    imaging.too_many_frames     an animation with more frames than ``max_frames``
    imaging.decode_failed       truncated or corrupt data
"""

from __future__ import annotations

import io
import logging
import math
import struct
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError, features

from ai_engine.errors import ImagingError

logger = logging.getLogger(__name__)

RGBA = npt.NDArray[np.uint8]

# Alpha below this counts as "not opaque" when deciding whether alpha carries a cut-out.
_OPAQUE_MIN = 250
# Share of pixels that must be clearly transparent for the alpha channel to mean something.
_MEANINGFUL_ALPHA_FRACTION = 0.001

# Animations give their first frame; a file declaring more frames than this is
# refused (counting GIF frames walks the file, so the count itself must stay cheap).
DEFAULT_MAX_FRAMES = 1000

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))

_ISO_BMFF_BRANDS = {
    b"heic": "heic", b"heix": "heic", b"heim": "heic", b"heis": "heic",
    b"hevc": "heic", b"hevx": "heic", b"mif1": "heic", b"msf1": "heic",
    b"avif": "avif", b"avis": "avif",
}


def sniff_format(data: bytes) -> str | None:
    """The image format ``data`` starts like (``png``, ``jpeg``, ``gif``, ``webp``,
    ``heic``, ``avif``), or ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp":
        # ISO base media file: the major brand, then compatible brands, name the codec.
        box_size = int.from_bytes(data[:4], "big")
        brands = [data[8:12]] + [data[i:i + 4] for i in range(16, min(box_size, 64), 4)]
        for brand in brands:
            if brand in _ISO_BMFF_BRANDS:
                return _ISO_BMFF_BRANDS[brand]
    return None


def check_image_format(data: bytes) -> str:
    """Return the sniffed format of ``data``; raise ``imaging.unsupported_format`` if none."""
    kind = sniff_format(data)
    if kind is None:
        raise ImagingError("not a supported image (PNG, JPEG, WebP, GIF, HEIC or AVIF)",
                           code="imaging.unsupported_format")
    return kind


@dataclass(frozen=True)
class Decoded:
    rgba: RGBA
    """``(H, W, 4)`` uint8, straight alpha."""
    original_size: tuple[int, int]
    """``(width, height)`` after EXIF orientation, before any shrinking."""
    format: str
    """The sniffed format: ``png``, ``jpeg``, ``gif``, ``webp``, ``heic`` or ``avif``."""


def decode_image(data: bytes, *, max_pixels: int, max_side: int | None = None,
                 max_bytes: int | None = None, max_frames: int = DEFAULT_MAX_FRAMES) -> RGBA:
    """:func:`decode` returning only the pixels."""
    return decode(data, max_pixels=max_pixels, max_side=max_side, max_bytes=max_bytes,
                  max_frames=max_frames).rgba


def decode(data: bytes, *, max_pixels: int, max_side: int | None = None,
           max_bytes: int | None = None, max_frames: int = DEFAULT_MAX_FRAMES) -> Decoded:
    """Decode ``data`` into an RGBA uint8 array ``(H, W, 4)``, straight alpha, sRGB.

    EXIF orientation is applied; animations give their first frame; every mode
    (palette with transparency, L, LA, 16-bit, CMYK, ...) becomes RGBA; an
    embedded ICC profile is converted to sRGB (an unusable profile is ignored).
    ``max_pixels`` is checked on the header's size; ``max_side``, when given,
    shrinks the result to at most that many pixels on its long side (JPEGs are
    then decoded at a reduced scale directly, which is much faster).
    """
    if not data:
        raise ImagingError("image is empty (0 bytes)", code="imaging.empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImagingError(f"image is {len(data)} bytes (limit {max_bytes})",
                           code="imaging.too_large")
    kind = check_image_format(data)
    if _declares_no_pixels(data, kind):
        raise ImagingError("image has no pixels (0 width or height)", code="imaging.empty")
    _register_plugin(kind)
    with warnings.catch_warnings():
        # Our own cap below is the one that counts; Pillow's bomb warning is noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = _open(data, kind=kind, max_pixels=max_pixels, max_frames=max_frames)
            header_size = image.size
            if max_side is not None and kind == "jpeg" and max(header_size) > max_side:
                # draft() keeps the result at least this large, so the long side
                # never drops below max_side.
                scale = max_side / max(header_size)
                image.draft(image.mode if image.mode == "CMYK" else "RGB",
                            (math.ceil(header_size[0] * scale),
                             math.ceil(header_size[1] * scale)))
            image.load()
            icc_profile = image.info.get("icc_profile")
            loaded_size = image.size
            image = _exif_transpose(image)
            # Orientations 5-8 swap width and height.
            swapped = image.size != loaded_size
            original_size = header_size[::-1] if swapped else header_size
            rgba = _to_rgba(image, icc_profile=icc_profile)
            if max_side is not None and max(rgba.shape[:2]) > max_side:
                rgba = _shrink(rgba, max_side=max_side)
        except ImagingError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImagingError(str(exc), code="imaging.too_many_pixels") from exc
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError,
                RuntimeError) as exc:
            # Pillow (and the HEIF plugin) report truncated and corrupt files
            # through all of these.
            raise ImagingError(f"image could not be decoded: {exc}",
                               code="imaging.decode_failed") from exc
    if rgba.shape[0] == 0 or rgba.shape[1] == 0:
        raise ImagingError("image has no pixels", code="imaging.empty")
    return Decoded(rgba=rgba, original_size=original_size, format=kind)


def has_meaningful_alpha(rgba: RGBA) -> bool:
    """Whether the alpha channel marks something (not all ~opaque)."""
    alpha = rgba[..., 3]
    if alpha.size == 0:
        return False
    return float(np.mean(alpha < _OPAQUE_MIN)) >= _MEANINGFUL_ALPHA_FRACTION


def _declares_no_pixels(data: bytes, kind: str) -> bool:
    """Whether a PNG or GIF header declares a zero width or height (Pillow then
    only says it cannot identify the file)."""
    if kind == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big") == 0 or int.from_bytes(data[20:24], "big") == 0
    if kind == "gif" and len(data) >= 10:
        return int.from_bytes(data[6:8], "little") == 0 or int.from_bytes(data[8:10], "little") == 0
    return False


def _open(data: bytes, *, kind: str, max_pixels: int, max_frames: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        if kind in ("heic", "avif"):
            raise ImagingError(f"{kind.upper()} images need a decoder plugin that is not "
                               "installed", code="imaging.unsupported_format") from exc
        raise ImagingError(f"image could not be decoded: {exc}",
                           code="imaging.decode_failed") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImagingError("image has no pixels", code="imaging.empty")
    if width * height > max_pixels:
        raise ImagingError(f"image is {width}x{height} pixels (limit {max_pixels} pixels)",
                           code="imaging.too_many_pixels")
    frames = int(getattr(image, "n_frames", 1))
    if frames > max_frames:
        raise ImagingError(f"image has {frames} frames (limit {max_frames})",
                           code="imaging.too_many_frames")
    if frames > 1:
        image.seek(0)
    return image


def _exif_transpose(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, struct.error) as exc:
        logger.warning("ignoring unreadable EXIF orientation: %s", exc)
        return image


def _shrink(rgba: RGBA, *, max_side: int) -> RGBA:
    height, width = rgba.shape[:2]
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap: a fast integer box reduction first, then Lanczos for the rest.
    image = Image.fromarray(rgba, "RGBA").resize(size, Image.Resampling.LANCZOS,
                                                 reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8).copy()


def _to_rgba(image: Image.Image, *, icc_profile: bytes | None = None) -> RGBA:
    mode = image.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _high_depth_to_rgba(image)
    if mode in ("P", "PA"):
        # Palette images may carry transparency in the palette or in a tRNS chunk;
        # converting through RGBA applies either.
        image = image.convert("RGBA")
    elif mode in ("YCbCr", "LAB", "HSV", "1"):
        image = image.convert("RGB")
    if icc_profile:
        image = _to_srgb(image, icc_profile)
    if image.mode == "CMYK":
        image = image.convert("RGB")
    if image.mode == "RGBA":
        return np.asarray(image, dtype=np.uint8).copy()
    return np.asarray(image.convert("RGBA"), dtype=np.uint8).copy()


def _to_srgb(image: Image.Image, icc_profile: bytes) -> Image.Image:
    """Convert ``image`` from its embedded profile to sRGB (RGB or RGBA out).

    A profile that cannot be read or does not fit the image's mode is ignored with
    a warning: the pixels are then taken as sRGB, which is what a browser would do.
    """
    out_mode = {"RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB", "L": "RGB", "LA": "RGBA"}.get(
        image.mode)
    if out_mode is None:
        return image
    alpha = image.getchannel("A") if image.mode == "LA" else None
    source = image.convert("L") if alpha is not None else image
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        if ImageCms.getProfileDescription(profile).strip().lower().startswith("srgb"):
            return image  # already sRGB: skip a transform that changes nothing
        converted = ImageCms.profileToProfile(
            source, profile, _SRGB, outputMode="RGB" if alpha is not None else out_mode,
            renderingIntent=ImageCms.Intent.PERCEPTUAL)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        logger.warning("ignoring an unusable ICC profile (%s image): %s", image.mode, exc)
        return image
    if converted is None:  # only when converting in place, which we never ask for
        return image
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _high_depth_to_rgba(image: Image.Image) -> RGBA:
    """16-bit and 32-bit grey to 8 bits by scaling, not clipping (Pillow clips)."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        top = 1.0 if values.size and float(np.nanmax(values)) <= 1.0 else 255.0
        grey = np.nan_to_num(values) / top * 255.0
    elif image.mode.startswith("I;16") or (values.size and float(values.max()) > 255):
        grey = values / 257.0
    else:
        grey = values
    grey8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    rgba = np.empty((*grey8.shape, 4), dtype=np.uint8)
    rgba[..., :3] = grey8[..., None]
    rgba[..., 3] = 255
    return rgba


def _register_plugin(kind: str) -> None:
    """Register the optional Pillow plugin that decodes ``kind``, when installed.

    Registration is idempotent; it only happens when such a file arrives, so a
    process that never sees HEIC or AVIF never imports the plugins.
    """
    if kind == "heic":
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            return
        register_heif_opener()
    elif kind == "avif" and not features.check("avif"):
        try:
            import pillow_avif  # noqa: F401  (importing it registers the decoder)
        except ImportError:
            return
