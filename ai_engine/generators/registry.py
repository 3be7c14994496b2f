"""Which generators exist, what they output, and how to build one.

Generator modules are imported lazily: the learned ones need PyTorch, which
the core install does not have. A generator whose module cannot be imported,
or whose weights are missing, is simply not available on this deployment.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ai_engine.config import Settings
from ai_engine.errors import SetupError
from ai_engine.generators.base import Generator

log = logging.getLogger(__name__)

MESH_FORMATS = ("glb", "stl", "obj", "ply")
SPLAT_FORMATS = ("splat_ply", "spz")

_CLASSES = {
    "silhouette": ("ai_engine.generators.silhouette", "SilhouetteGenerator"),
    "hunyuan3d": ("ai_engine.generators.hunyuan3d", "Hunyuan3DGenerator"),
    "trellis": ("ai_engine.generators.trellis.pipeline", "TrellisGenerator"),
}

# What each generator can produce: mesh generators also give splats (coloured
# surface samples); TRELLIS gives Gaussians only.
FORMATS: dict[str, tuple[str, ...]] = {
    "silhouette": MESH_FORMATS + SPLAT_FORMATS,
    "hunyuan3d": MESH_FORMATS + SPLAT_FORMATS,
    "trellis": SPLAT_FORMATS,
}


def generator_class(name: str) -> Any:
    module_name, class_name = _CLASSES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SetupError(f"generator {name!r} is not installed ({exc}); install the "
                         f"'{name}' extra", code="setup.not_installed") from exc
    return getattr(module, class_name)


def params_model(name: str) -> type[BaseModel]:
    model: type[BaseModel] = generator_class(name).Params
    return model


def has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_auto(models_dir: Path) -> str:
    """``auto``: Hunyuan3D-2 when its weights and a GPU are present, else silhouette."""
    if not has_gpu():
        return "silhouette"
    try:
        from ai_engine.models_inventory import available_generators
    except ImportError:
        return "silhouette"
    return "hunyuan3d" if "hunyuan3d" in available_generators(models_dir,
                                                              has_gpu=True) else "silhouette"


def load_options(name: str, settings: Settings | None) -> dict[str, Any]:
    """Loader keyword arguments a generator takes from the settings."""
    if settings is None:
        return {}
    if name == "hunyuan3d":
        return {"compile_dit": settings.hunyuan3d_compile,
                "adaptive_kv": settings.hunyuan3d_adaptive_kv}
    return {}


def load_generator(name: str, *, models_dir: Path, device: str,
                   settings: Settings | None = None) -> Generator:
    """Build and warm up one generator instance for ``device`` (blocking; run off the loop)."""
    cls = generator_class(name)
    loader = getattr(cls, "load", None)
    options = load_options(name, settings)
    generator: Generator = loader(models_dir=models_dir, device=device, **options) \
        if loader else cls()
    log.info("generator %s ready on %s", name, device)
    return generator
