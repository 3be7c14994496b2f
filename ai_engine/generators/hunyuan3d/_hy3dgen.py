"""Import hy3dgen's shape-generation modules without its application stack.

``hy3dgen/shapegen/__init__.py`` pulls in the whole package on any import of a
submodule: the mesh postprocessors (pymeshlab), the image preprocessors
(OpenCV) and the image conditioner (torchvision, whose PyPI wheels do not load
beside a CPU-only torch build). The shape chain needs none of them: the DiT,
the ShapeVAE and the schedulers import only torch, einops, diffusers' config
mixins, scikit-image and tqdm. So the two package levels are registered as
bare packages (their ``__path__`` only) and the submodules are imported from
there; an already imported full ``hy3dgen.shapegen`` is used as is.

Config files name classes by import path (``target:``). Only the classes in
:data:`TARGETS` are accepted: a config file never chooses what gets imported.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from pathlib import Path
from typing import Any

from ai_engine.errors import SetupError

#: Accepted ``target`` names (the config's last dotted component) and the
#: hy3dgen submodule that defines each.
TARGETS: dict[str, str] = {
    "Hunyuan3DDiT": "hy3dgen.shapegen.models.denoisers.hunyuan3ddit",
    "ShapeVAE": "hy3dgen.shapegen.models.autoencoders.model",
    "FlowMatchEulerDiscreteScheduler": "hy3dgen.shapegen.schedulers",
    "ConsistencyFlowMatchEulerDiscreteScheduler": "hy3dgen.shapegen.schedulers",
}

_BARE_PACKAGES = ("hy3dgen.shapegen", "hy3dgen.shapegen.models")


def _register_bare_packages() -> None:
    try:
        root = importlib.import_module("hy3dgen")
    except ImportError as exc:
        raise SetupError("the hy3dgen package is not installed; install the 'hunyuan3d' extra",
                         code="setup.not_installed") from exc
    base = Path(next(iter(root.__path__)))
    for name in _BARE_PACKAGES:
        if name in sys.modules:
            continue
        module = types.ModuleType(name, "hy3dgen package registered without its __init__ "
                                        "(see ai_engine.generators.hunyuan3d._hy3dgen)")
        module.__path__ = [str(base.joinpath(*name.split(".")[1:]))]
        module.__package__ = name
        sys.modules[name] = module


def import_module(name: str) -> types.ModuleType:
    """Import ``hy3dgen.shapegen.<...>`` submodule ``name`` (full dotted name)."""
    _register_bare_packages()
    module = importlib.import_module(name)
    # hy3dgen logs every kv-cache fill and FlashVDM resolution at INFO on its own handler.
    logging.getLogger("hy3dgen.shapgen").setLevel(logging.WARNING)
    return module


def resolve_target(target: str) -> Any:
    """The hy3dgen class a config ``target`` names, if it is one of :data:`TARGETS`."""
    class_name = target.rsplit(".", 1)[-1]
    module_name = TARGETS.get(class_name)
    if module_name is None or not target.startswith("hy3dgen."):
        raise SetupError(f"unsupported model class {target!r} in the Hunyuan3D config; "
                         f"expected one of {sorted(TARGETS)}", code="setup.bad_config")
    return getattr(import_module(module_name), class_name)


def volume_decoders() -> types.ModuleType:
    return import_module("hy3dgen.shapegen.models.autoencoders.volume_decoders")


def surface_extractors() -> types.ModuleType:
    return import_module("hy3dgen.shapegen.models.autoencoders.surface_extractors")


def pipelines() -> types.ModuleType:
    """hy3dgen's monolithic pipelines (benchmarks and reference tests only)."""
    return import_module("hy3dgen.shapegen.pipelines")
