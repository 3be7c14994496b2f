"""Build one Hunyuan3D-2 variant's models from local files.

The config's ``model``, ``vae`` and ``scheduler`` sections name hy3dgen classes
(only the ones in :data:`._hy3dgen.TARGETS` are accepted) with their keyword
arguments; ``conditioner`` describes the DINOv2 encoder. Weights come from one
file split by its key prefix (``model.``, ``vae.``, ``conditioner.``), or a
``.ckpt`` holding those three state dicts, plus an optional separate VAE.
Nothing is ever fetched from the Hub.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from ai_engine.errors import SetupError
from ai_engine.generators.hunyuan3d import _hy3dgen
from ai_engine.generators.hunyuan3d.conditioner import ImageConditioner
from ai_engine.generators.hunyuan3d.layout import WeightsLocation

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


@dataclass
class VariantModels:
    """The loaded models of one variant, in eval mode on one device and dtype."""

    variant: str
    dit: Any  # hy3dgen's Hunyuan3DDiT (hy3dgen ships no type information)
    vae: Any  # hy3dgen's ShapeVAE
    conditioner: ImageConditioner
    scheduler: Any
    image_size_px: int
    location: WeightsLocation

    @property
    def guidance_distilled(self) -> bool:
        """Guidance enters through an embedding, so no doubled (CFG) batch."""
        return bool(getattr(self.dit, "guidance_embed", False))

    @property
    def flash_decoder(self) -> bool:
        """A FlashVDM (turbo) geo-decoder: narrower, for hierarchical decoding with
        adaptive KV selection."""
        return int(getattr(self.vae.geo_decoder, "downsample_ratio", 1)) > 1


def load_variant(location: WeightsLocation, *, device: torch.device, dtype: torch.dtype,
                 shared_conditioners: list[ImageConditioner] | None = None) -> VariantModels:
    """Build and load the models of one variant.

    ``shared_conditioners``: conditioners already loaded for other variants; one
    with identical weights is reused instead of holding a second copy.
    """
    config = _read_yaml(location.config)
    parts = _read_parts(location.weights, device=device)
    for section in ("model", "vae", "conditioner", "scheduler"):
        if section not in config and not (section == "vae" and location.vae_config):
            raise SetupError(f"{location.config} has no '{section}' section",
                             code="setup.bad_config")
    dit = _build(config["model"], parts.get("model"), device=device, dtype=dtype,
                 what=f"{location.weights.name} (model.*)")
    if location.vae_config is not None and location.vae_weights is not None:
        vae_config = _read_yaml(location.vae_config)
        vae = _build(vae_config, _read_state(location.vae_weights, device=device),
                     device=device, dtype=dtype, what=location.vae_weights.name)
    else:
        vae = _build(config["vae"], parts.get("vae"), device=device, dtype=dtype,
                     what=f"{location.weights.name} (vae.*)")
    conditioner = _conditioner(config["conditioner"], parts.get("conditioner"), device=device,
                               dtype=dtype, shared=shared_conditioners or [])
    scheduler_config = config["scheduler"]
    scheduler = _hy3dgen.resolve_target(scheduler_config["target"])(
        **dict(scheduler_config.get("params") or {}))
    image_params = (config.get("image_processor") or {}).get("params") or {}
    logger.info("hunyuan3d %s loaded from %s (%s layout)", location.variant,
                location.weights, location.layout)
    return VariantModels(location.variant, dit, vae, conditioner, scheduler,
                         int(image_params.get("size", 512)), location)


def _build(section: Mapping[str, Any], state: StateDict | None, *, device: torch.device,
           dtype: torch.dtype, what: str) -> nn.Module:
    if not state:
        raise SetupError(f"no weights for {section.get('target')} in {what}",
                         code="setup.missing_weights")
    cls = _hy3dgen.resolve_target(str(section.get("target")))
    params = dict(section.get("params") or {})
    params.pop("ckpt_path", None)  # the loader alone decides which files are read
    # Built on the target device (random init there is fast), then cast like
    # hy3dgen's pipeline casts (buffers included), then the weights copied in.
    with torch.device(device):
        module: nn.Module = cls(**params)
    module.to(dtype=dtype)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SetupError(f"weights in {what} do not fit {cls.__name__}: {exc}",
                         code="setup.bad_weights") from exc
    return module.eval().requires_grad_(False)


def _conditioner(section: Mapping[str, Any], state: StateDict | None, *, device: torch.device,
                 dtype: torch.dtype, shared: list[ImageConditioner]) -> ImageConditioner:
    if not state:
        raise SetupError("no conditioner.* weights (DINOv2) in the Hunyuan3D file",
                         code="setup.missing_weights")
    with torch.device(device):
        conditioner = ImageConditioner.from_config(section.get("params") or {})
    conditioner.to(dtype=dtype)
    conditioner.load_weights(state)
    conditioner.eval().requires_grad_(False)
    for other in shared:
        if _same_weights(conditioner, other):
            return other
    return conditioner


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k])
        for k in sa)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SetupError(f"cannot read {path}: {exc}", code="setup.bad_config") from exc
    if not isinstance(data, dict):
        raise SetupError(f"{path} is not a mapping", code="setup.bad_config")
    return data


def _read_state(path: Path, *, device: torch.device) -> StateDict:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device=str(device))
        loaded = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise SetupError(f"cannot read {path}: {exc}", code="setup.bad_weights") from exc
    if not isinstance(loaded, dict):
        raise SetupError(f"{path} holds no state dict", code="setup.bad_weights")
    return loaded


def _read_parts(path: Path, *, device: torch.device) -> dict[str, StateDict]:
    """``{"model": ..., "vae": ..., "conditioner": ...}`` from a combined file."""
    state = _read_state(path, device=device)
    if all(isinstance(v, dict) for v in state.values()):  # a .ckpt of three state dicts
        return {str(k): dict(v) for k, v in state.items()}
    parts: dict[str, StateDict] = {}
    for key, tensor in state.items():
        prefix, _, rest = key.partition(".")
        parts.setdefault(prefix, {})[rest] = tensor
    return parts
