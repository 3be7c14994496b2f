"""Learned background removal, chosen by configuration, weights from MODELS_DIR only.

A :class:`Segmenter` is built once per process by :func:`load_segmenter` (loading
is slow) and then called from the CPU pool: ``segmenter(rgba) -> rgba`` returns
the same pixels with the object's alpha (straight alpha, colours untouched).

Methods (``Settings.cutout``):

- ``rembg``: an ONNX file run by a ``rembg`` session (U²-Net, IS-Net, BiRefNet,
  BRIA RMBG), which does each model's own pre- and post-processing. The session
  is given the file's path directly, so rembg never looks in its home folder
  and never downloads.
- ``transformers``: an RMBG-2.0 / BiRefNet folder in the Hub layout
  (``config.json``, the model's code, ``model.safetensors``) loaded through
  ``AutoModelForImageSegmentation``; 1024² input, ImageNet normalisation,
  sigmoid of the last output (:mod:`ai_engine.imaging.segment_transformers`).
- ``classical``: :func:`ai_engine.imaging.cutout.remove_background`, no weights.
- ``auto``: the first of :data:`TRANSFORMERS_FOLDERS`, then :data:`REMBG_FILES`
  (under ``MODELS_DIR/rembg/``) that exists, else classical.

Errors: ``SetupError`` ``setup.model_missing`` / ``setup.model_load_failed`` at
load; ``ImagingError`` ``imaging.no_object`` when a mask is empty or full.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from ai_engine.errors import SetupError
from ai_engine.imaging.cutout import Method, check_coverage, remove_background
from ai_engine.imaging.decode import RGBA

if TYPE_CHECKING:
    from ai_engine.config import Settings

logger = logging.getLogger(__name__)

TRANSFORMERS_FOLDERS = ("RMBG-2.0", "BiRefNet")
"""Folders under MODELS_DIR that ``auto`` looks for, best first."""
REMBG_DIR = "rembg"
REMBG_FILES = ("birefnet-general", "bria-rmbg", "birefnet-general-lite", "isnet-general-use",
               "u2net", "silueta", "u2netp")
"""``MODELS_DIR/rembg/<name>.onnx`` files that ``auto`` looks for, best first; each
name is also the rembg session that runs it."""
# rembg sessions that do not produce one foreground mask from an image alone.
_UNSUITABLE_SESSIONS = {"sam", "u2net_cloth_seg"}
# Alpha at or above this counts as object when checking the mask's coverage.
_OBJECT_ALPHA = 128
# Learned masks leave faint values over the background and just-under-full ones
# inside the object; snapped to 0 and 255, or framing (which boxes alpha > 0)
# would take the whole frame for the object.
_SNAP_LOW = 10
_SNAP_HIGH = 245


class Segmenter(Protocol):
    """Background removal: RGBA in, the same pixels with the object's alpha out."""

    method: Method
    description: str
    """What runs, for logs: ``"rembg u2net (models/rembg/u2net.onnx) on cpu"``."""

    def __call__(self, rgba: RGBA) -> RGBA: ...


class ClassicalSegmenter:
    """The weight-free fallback (:func:`remove_background`)."""

    method: Method = "classical"
    description = "classical (no weights)"

    def __call__(self, rgba: RGBA) -> RGBA:
        logger.info("cut-out: classical background removal")
        return remove_background(rgba)


class RembgSegmenter:
    """An ONNX segmentation model run through a rembg session."""

    method: Method = "rembg"

    def __init__(self, model_path: Path, *, session_name: str | None = None,
                 device: str = "cpu") -> None:
        name = session_name or rembg_session_for(model_path)
        self.session = _rembg_session(name, model_path, device=device)
        providers = self.session.inner_session.get_providers()
        self.description = f"rembg {name} ({model_path}) on {', '.join(providers)}"

    def __call__(self, rgba: RGBA) -> RGBA:
        image = Image.fromarray(np.ascontiguousarray(rgba[..., :3]), "RGB")
        # ONNX Runtime sessions may be run from several threads at once.
        masks = self.session.predict(image)
        mask = np.asarray(masks[0].convert("L"), dtype=np.uint8)
        return apply_mask(rgba, mask)


def apply_mask(rgba: RGBA, mask: npt.NDArray[np.uint8]) -> RGBA:
    """``rgba`` with ``min(mask, its alpha)`` as alpha, near-0 and near-255 values
    snapped; refuses an empty or full mask (``imaging.no_object``)."""
    if mask.shape != rgba.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the image {rgba.shape[:2]}")
    snapped = np.where(mask < _SNAP_LOW, 0, np.where(mask > _SNAP_HIGH, 255, mask))
    alpha = np.minimum(snapped, rgba[..., 3]).astype(np.uint8)
    check_coverage(alpha >= _OBJECT_ALPHA)
    out = rgba.copy()
    out[..., 3] = alpha
    return out


def rembg_session_for(model_path: Path) -> str:
    """The rembg session that runs ``model_path``: its name when the file is named
    after one (``u2net.onnx``), else ``u2net_custom`` (320², ImageNet normalisation)."""
    from rembg.sessions import sessions_names

    stem = model_path.stem
    if stem in sessions_names and stem not in _UNSUITABLE_SESSIONS:
        return stem
    return "u2net_custom"


def _rembg_session(name: str, model_path: Path, *, device: str) -> Any:
    import onnxruntime as ort
    from rembg.sessions import sessions_class

    base = next((cls for cls in sessions_class if cls.name() == name), None)
    if base is None or name in _UNSUITABLE_SESSIONS or not base.is_local():
        raise SetupError(f"rembg has no usable session named {name!r}",
                         code="setup.model_load_failed")
    path = str(model_path)

    def local_file(cls: type, *args: object, **kwargs: object) -> str:
        return path

    # Every rembg session resolves its file through download_models(), which
    # fetches over the network when the file is missing from rembg's own home;
    # answering with our path keeps the session's processing and drops the fetch.
    session_class = type(f"Local{base.__name__}", (base,),
                         {"download_models": classmethod(local_file)})
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: provider fallbacks are logged by us
    try:
        return session_class(name, options, providers=_onnx_providers(device),
                             model_path=path)
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        raise SetupError(f"rembg could not load {model_path}: {exc}",
                         code="setup.model_load_failed") from exc


def _onnx_providers(device: str) -> list[Any]:
    import onnxruntime as ort

    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def find_model(settings: Settings) -> tuple[Method, Path] | None:
    """The learned model ``settings`` asks for, or for ``auto`` the first one present.

    Raises ``setup.model_missing`` when a named method or model is not there.
    """
    models_dir = Path(settings.models_dir)
    method = settings.cutout
    if method == "classical":
        return None
    if settings.cutout_model:
        path = models_dir / settings.cutout_model
        if not path.exists():
            raise SetupError(f"cut-out model {path} does not exist", code="setup.model_missing")
        kind: Method = "transformers" if path.is_dir() else "rembg"
        if method not in ("auto", kind):
            raise SetupError(f"{path} is a {kind} model, not a {method} one",
                             code="setup.model_missing")
        return kind, path
    candidates: list[tuple[Method, Path]] = []
    if method in ("auto", "transformers"):
        candidates += [("transformers", models_dir / name) for name in TRANSFORMERS_FOLDERS]
    if method in ("auto", "rembg"):
        candidates += [("rembg", models_dir / REMBG_DIR / f"{name}.onnx")
                       for name in REMBG_FILES]
    for kind, path in candidates:
        if (path / "config.json").is_file() if kind == "transformers" else path.is_file():
            return kind, path
    if method == "auto":
        return None
    raise SetupError(f"AI_ENGINE_CUTOUT={method} but none of "
                     f"{', '.join(str(p) for _, p in candidates)} exists",
                     code="setup.model_missing")


def load_segmenter(settings: Settings) -> Segmenter:
    """Build the configured segmenter (slow: call once per process, off the event loop)."""
    found = find_model(settings)
    segmenter: Segmenter
    if found is None:
        segmenter = ClassicalSegmenter()
        if settings.cutout == "auto":
            logger.info("no learned cut-out model under %s; using the classical cut-out",
                        settings.models_dir)
    elif found[0] == "rembg":
        segmenter = RembgSegmenter(found[1], session_name=settings.cutout_rembg_session,
                                   device=_device(settings.cutout_device))
    else:
        from ai_engine.imaging.segment_transformers import TransformersSegmenter

        segmenter = TransformersSegmenter.load(
            found[1], device=_device(settings.cutout_device), size_px=settings.cutout_size_px,
            trust_remote_code=settings.cutout_trust_remote_code)
    logger.info("cut-out method: %s", segmenter.description)
    return segmenter


def _device(setting: str | None) -> str:
    """``setting``, or cuda when a GPU is visible (torch is asked only if installed)."""
    if setting:
        return setting
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"

