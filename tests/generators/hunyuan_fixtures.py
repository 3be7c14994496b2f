"""Random-initialised Hunyuan3D-2 weights in the official layouts.

``write_tiny_hunyuan(models_dir)`` writes a tiny DiT, ShapeVAE and DINOv2 (a few
hundred kilobytes per variant) that the real loader reads and the real chain
runs on a CPU in a fraction of a second. ``write_hunyuan(..., size="full")``
writes the published sizes (for GPU benchmarks).

Layouts (see :mod:`ai_engine.generators.hunyuan3d.layout`):

* ``"folder"``: ``hunyuan3d-dit-<v>/config.yaml`` + ``model.fp16.safetensors``
  (keys ``model.*``, ``vae.*``, ``conditioner.*``), and for turbo the FlashVDM
  VAE in ``hunyuan3d-vae-v2-0-turbo/`` (plain keys);
* ``"combined"``: ``hunyuan3d-dit-<v>.safetensors`` + ``hunyuan3d-dit-<v>.yaml``.

DINOv2 keys are written in the transformers 4.x naming the published files use.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from ai_engine.generators.hunyuan3d import _hy3dgen
from ai_engine.generators.hunyuan3d.conditioner import ImageConditioner, rename_dinov2
from ai_engine.generators.hunyuan3d.layout import SPECS

Size = Literal["tiny", "full"]

_DIT = {
    "tiny": {"in_channels": 8, "context_in_dim": 32, "hidden_size": 32, "mlp_ratio": 2.0,
             "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [16],
             "theta": 10000, "qkv_bias": True},
    "full": {"in_channels": 64, "context_in_dim": 1536, "hidden_size": 1024, "mlp_ratio": 4.0,
             "num_heads": 16, "depth": 16, "depth_single_blocks": 32, "axes_dim": [64],
             "theta": 10000, "qkv_bias": True},
}
_VAE = {
    # A scale factor far from 1, so skipping the unscale changes the shape.
    "tiny": {"num_latents": 32, "embed_dim": 8, "width": 32, "heads": 2,
             "num_decoder_layers": 1, "num_freqs": 2, "include_pi": False, "qkv_bias": False,
             "qk_norm": True, "scale_factor": 0.4},
    "full": {"num_latents": 3072, "embed_dim": 64, "width": 1024, "heads": 16,
             "num_decoder_layers": 16, "num_freqs": 8, "include_pi": False, "qkv_bias": False,
             "qk_norm": True, "scale_factor": 0.9990943042622529},
}
_TURBO_DECODER = {"geo_decoder_downsample_ratio": 2, "geo_decoder_mlp_expand_ratio": 1,
                  "geo_decoder_ln_post": False}
_DINO = {
    "tiny": ({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 56}, 56),
    "full": ({"hidden_size": 1536, "num_hidden_layers": 40, "num_attention_heads": 24,
              "image_size": 518}, 518),
}
_DINO_COMMON = {"model_type": "dinov2", "patch_size": 14, "num_channels": 3, "mlp_ratio": 4,
                "use_swiglu_ffn": True, "layerscale_value": 1.0, "layer_norm_eps": 1e-6,
                "qkv_bias": True, "hidden_act": "gelu", "attention_probs_dropout_prob": 0.0,
                "hidden_dropout_prob": 0.0, "drop_path_rate": 0.0, "initializer_range": 0.02}


def hunyuan_config(variant: str, *, size: Size = "tiny") -> dict[str, Any]:
    """A config.yaml in the published structure for ``variant``."""
    dit = dict(_DIT[size], guidance_embed=variant in ("fast", "turbo"))
    if size == "full" and variant == "mini":
        dit.update(depth=8, depth_single_blocks=16)
    dino, image_size = _DINO[size]
    scheduler: dict[str, Any] = {
        "target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler",
        "params": {"num_train_timesteps": 1000}}
    if variant == "turbo":
        scheduler = {
            "target": "hy3dgen.shapegen.schedulers.ConsistencyFlowMatchEulerDiscreteScheduler",
            "params": {"num_train_timesteps": 1000, "pcm_timesteps": 100}}
    return {
        "model": {"target": "hy3dgen.shapegen.models.Hunyuan3DDiT", "params": dit},
        "vae": {"target": "hy3dgen.shapegen.models.ShapeVAE", "params": dict(_VAE[size])},
        "conditioner": {
            "target": "hy3dgen.shapegen.models.SingleImageEncoder",
            "params": {"main_image_encoder": {"type": "DinoImageEncoder", "kwargs": {
                "config": dict(_DINO_COMMON, **dino), "image_size": image_size,
                "use_cls_token": True}}}},
        "image_processor": {"target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2",
                            "params": {"size": 512, "border_ratio": 0.15}},
        "scheduler": scheduler,
    }


def turbo_vae_config(*, size: Size = "tiny") -> dict[str, Any]:
    return {"target": "hy3dgen.shapegen.models.ShapeVAE",
            "params": dict(_VAE[size], **_TURBO_DECODER)}


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float16).contiguous()
            for k, v in module.state_dict().items()}


def _build(section: dict[str, Any], device: str) -> nn.Module:
    with torch.device(device):
        module: nn.Module = _hy3dgen.resolve_target(section["target"])(**section["params"])
    return module


def write_hunyuan(models_dir: Path, *, variants: tuple[str, ...] = ("v2-0", "turbo"),
                  layout: Literal["folder", "combined"] = "folder", size: Size = "tiny",
                  seed: int = 0, device: str = "cpu") -> dict[str, Path]:
    """Write random weights for ``variants``; returns each variant's weights file."""
    models_dir = Path(models_dir)
    written: dict[str, Path] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        shared_vae: dict[str, torch.Tensor] | None = None
        conditioner_state: dict[str, torch.Tensor] | None = None
        for variant in variants:
            config = hunyuan_config(variant, size=size)
            dit = _build(config["model"], device)
            if shared_vae is None:  # one VAE and one DINOv2 for all variants, as published
                shared_vae = _state(_build(config["vae"], device))
                params = config["conditioner"]["params"]
                with torch.device(device):
                    conditioner = ImageConditioner.from_config(params)
                conditioner_state = rename_dinov2(_state(conditioner), legacy=True)
            assert conditioner_state is not None
            tensors = {f"model.{k}": v for k, v in _state(dit).items()}
            tensors.update({f"vae.{k}": v for k, v in shared_vae.items()})
            tensors.update({f"conditioner.{k}": v for k, v in conditioner_state.items()})
            spec = SPECS[variant]  # type: ignore[index]
            if layout == "folder":
                folder = models_dir / spec.dit
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / "model.fp16.safetensors"
                (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            else:
                models_dir.mkdir(parents=True, exist_ok=True)
                path = models_dir / f"{spec.dit}.safetensors"
                (models_dir / f"{spec.dit}.yaml").write_text(
                    yaml.safe_dump(config, sort_keys=False))
            save_file(tensors, str(path))
            written[variant] = path
            del dit, tensors
            if variant == "turbo" and layout == "folder":
                _write_turbo_vae(models_dir / spec.vae, size=size, device=device)
    return written


def _write_turbo_vae(folder: Path, *, size: Size, device: str) -> None:
    config = turbo_vae_config(size=size)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(copy.deepcopy(config), sort_keys=False))
    save_file(_state(_build(config, device)), str(folder / "model.fp16.safetensors"))


def write_tiny_hunyuan(models_dir: Path, *, variants: tuple[str, ...] = ("v2-0", "turbo"),
                       layout: Literal["folder", "combined"] = "folder",
                       seed: int = 0) -> dict[str, Path]:
    """Tiny random Hunyuan3D-2 weights under ``models_dir`` (CPU, well under a second)."""
    return write_hunyuan(models_dir, variants=variants, layout=layout, size="tiny", seed=seed)
