"""Reading the published TRELLIS-image-large folder.

Layout (``MODELS_DIR/trellis-image-large/``, as published)::

    pipeline.json                       roles → checkpoints, sampler defaults,
                                        SLAT normalisation, conditioning model
    ckpts/<stem>.json                   {"name": class name, "args": {...}}
    ckpts/<stem>.safetensors            the weights, mixed float16/float32

A model is built from its json ``args`` on the ``meta`` device (no memory),
its trunk put in the compute dtype, and the safetensors file loaded strictly:
every tensor name and shape must match the module one to one, or loading
fails with ``setup.checkpoint_mismatch``. Only the four checkpoints a Gaussian
result needs are loaded; the mesh and radiance-field decoders are not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from ai_engine.errors import SetupError
from ai_engine.generators.trellis.gs_decoder import SLatGaussianDecoder
from ai_engine.generators.trellis.sampler import FlowSettings
from ai_engine.generators.trellis.slat_flow import SLatFlowModel
from ai_engine.generators.trellis.ss_decoder import SparseStructureDecoder
from ai_engine.generators.trellis.ss_flow import SparseStructureFlowModel

#: Folder of the published pipeline under ``MODELS_DIR``.
TRELLIS_FOLDER = "trellis-image-large"

#: Roles this package loads, as named in ``pipeline.json``.
ROLES = ("sparse_structure_flow_model", "sparse_structure_decoder", "slat_flow_model",
         "slat_decoder_gs")

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "SparseStructureFlowModel": SparseStructureFlowModel,
    "SparseStructureDecoder": SparseStructureDecoder,
    "SLatFlowModel": SLatFlowModel,
    "SLatGaussianDecoder": SLatGaussianDecoder,
}


class TrellisModule(Protocol):
    def set_compute_dtype(self, dtype: torch.dtype) -> None: ...


@dataclass(frozen=True)
class PipelineConfig:
    """What ``pipeline.json`` says that inference needs."""

    checkpoints: dict[str, str]  # role → path of the checkpoint stem, relative to the root
    ss_sampler: FlowSettings
    slat_sampler: FlowSettings
    slat_mean: tuple[float, ...]
    slat_std: tuple[float, ...]
    image_cond_model: str


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise SetupError(f"missing TRELLIS file {path}", code="setup.models_missing")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SetupError(f"cannot read {path}: {exc}", code="setup.models_invalid") from exc


def _flow_settings(sampler: dict[str, Any]) -> FlowSettings:
    params = sampler.get("params", {})
    return FlowSettings(steps=int(params.get("steps", 25)),
                        cfg_strength=float(params.get("cfg_strength", 5.0)),
                        cfg_interval=tuple(params.get("cfg_interval", (0.0, 1.0))),
                        rescale_t=float(params.get("rescale_t", 1.0)),
                        sigma_min=float(sampler.get("args", {}).get("sigma_min", 1e-5)))


def read_pipeline_config(root: Path) -> PipelineConfig:
    """Parse ``root/pipeline.json``; raises :class:`SetupError` when it is missing or incomplete."""
    data = _read_json(root / "pipeline.json")
    try:
        args = data["args"]
        models = args["models"]
        checkpoints = {role: str(models[role]) for role in ROLES}
        norm = args["slat_normalization"]
        return PipelineConfig(
            checkpoints=checkpoints,
            ss_sampler=_flow_settings(args["sparse_structure_sampler"]),
            slat_sampler=_flow_settings(args["slat_sampler"]),
            slat_mean=tuple(float(v) for v in norm["mean"]),
            slat_std=tuple(float(v) for v in norm["std"]),
            image_cond_model=str(args.get("image_cond_model", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SetupError(f"{root / 'pipeline.json'} lacks {exc}",
                         code="setup.models_invalid") from exc


def build_model(class_name: str, args: dict[str, Any]) -> nn.Module:
    """Construct one model from its published ``{"name", "args"}`` (on the current device)."""
    cls = MODEL_CLASSES.get(class_name)
    if cls is None:
        raise SetupError(f"unsupported TRELLIS model class {class_name!r}",
                         code="setup.models_invalid")
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        raise SetupError(f"cannot build {class_name} from its arguments: {exc}",
                         code="setup.models_invalid") from exc


def load_model(root: Path, stem: str, *, device: torch.device | str,
               dtype: torch.dtype) -> nn.Module:
    """Build ``root/<stem>.json`` and load ``root/<stem>.safetensors`` strictly.

    ``dtype`` is the compute dtype of the model's trunk (float16 or bfloat16 on
    a GPU, float32 on the CPU); the rest stays float32.
    """
    from safetensors import safe_open

    spec = _read_json(root / f"{stem}.json")
    weights = root / f"{stem}.safetensors"
    if not weights.is_file():
        raise SetupError(f"missing TRELLIS weights {weights}", code="setup.models_missing")
    with torch.device("meta"):
        model = build_model(str(spec.get("name")), dict(spec.get("args", {})))
    model.set_compute_dtype(dtype)  # type: ignore[operator]
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(weights), framework="pt", device="cpu") as f:
        names = set(f.keys())
        _check_names(stem, expected.keys(), names)
        for name, slot in expected.items():
            tensor = f.get_tensor(name)
            if tuple(tensor.shape) != tuple(slot.shape):
                raise SetupError(f"{stem}: {name} has shape {tuple(tensor.shape)}, the model "
                                 f"expects {tuple(slot.shape)}", code="setup.checkpoint_mismatch")
            state[name] = tensor.to(device=device, dtype=slot.dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval().requires_grad_(False)
    return model


def _check_names(stem: str, expected: Any, found: set[str]) -> None:
    missing = sorted(set(expected) - found)
    unexpected = sorted(found - set(expected))
    if missing or unexpected:
        raise SetupError(f"{stem}: checkpoint does not match the model: missing {missing[:5]}"
                         f"{'…' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'…' if len(unexpected) > 5 else ''}",
                         code="setup.checkpoint_mismatch")


def checkpoint_paths(root: Path, config: PipelineConfig) -> dict[str, tuple[Path, str]]:
    """role → (folder, stem) of each checkpoint this package loads."""
    paths = {}
    for role, relative in config.checkpoints.items():
        path = root / relative
        paths[role] = (path.parent, path.name)
    return paths
