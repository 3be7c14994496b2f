"""Tiny random-initialised TRELLIS and DINOv2 checkpoints in the published layouts.

``write_tiny_trellis(models_dir)`` writes ``models_dir/trellis-image-large/``
(``pipeline.json`` as published, ``ckpts/<stem>.json`` with small arguments and
``ckpts/<stem>.safetensors`` with the trunk in float16 as published) and
``models_dir/dinov2-vitl14-reg/`` (a 2-layer DINOv2 with 4 registers saved by
``transformers``). The sparse structure is 4³ latent → 16³ occupancy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ai_engine.generators.trellis.loading import build_model

#: The published ``pipeline.json``, ``ckpts/*.json`` and every tensor's name, shape
#: and dtype of the four checkpoints (``state_dicts.json``).
FACTS = Path(__file__).parent / "published"
COND_CHANNELS = 32
OCCUPANCY_RESOLUTION = 16

PUBLISHED_REPRESENTATION: dict[str, Any] = {
    "lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0,
           "_rotation": 0.1},
    "perturb_offset": True, "voxel_size": 1.5, "num_gaussians": 32,
    "2d_filter_kernel_size": 0.1, "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3,
    "opacity_bias": 0.1, "scaling_activation": "softplus",
}

TINY: dict[str, dict[str, Any]] = {
    "ss_flow_img_dit_L_16l8_fp16": {"name": "SparseStructureFlowModel", "args": {
        "resolution": 4, "in_channels": 8, "out_channels": 8, "model_channels": 32,
        "cond_channels": COND_CHANNELS, "num_blocks": 2, "num_heads": 2, "mlp_ratio": 2,
        "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": True, "use_fp16": True}},
    "ss_dec_conv3d_16l8_fp16": {"name": "SparseStructureDecoder", "args": {
        "out_channels": 1, "latent_channels": 8, "num_res_blocks": 1,
        "num_res_blocks_middle": 1, "channels": [16, 8, 8], "use_fp16": True}},
    "slat_flow_img_dit_L_64l8p2_fp16": {"name": "SLatFlowModel", "args": {
        "resolution": OCCUPANCY_RESOLUTION, "in_channels": 8, "out_channels": 8,
        "model_channels": 32, "cond_channels": COND_CHANNELS, "num_blocks": 2, "num_heads": 2,
        "mlp_ratio": 2, "patch_size": 2, "num_io_res_blocks": 2, "io_block_channels": [16],
        "pe_mode": "ape", "qk_rms_norm": True, "use_fp16": True}},
    "slat_dec_gs_swin8_B_64l8gs32_fp16": {"name": "SLatGaussianDecoder", "args": {
        "resolution": OCCUPANCY_RESOLUTION, "model_channels": 24, "latent_channels": 8,
        "num_blocks": 2, "num_heads": 2, "mlp_ratio": 2, "attn_mode": "swin",
        "window_size": 4, "use_fp16": True,
        "representation_config": PUBLISHED_REPRESENTATION}},
}


def pipeline_json() -> dict[str, Any]:
    """The published ``pipeline.json``."""
    data: dict[str, Any] = json.loads((FACTS / "pipeline.json").read_text())
    return data


def tiny_state_dict(stem: str, *, seed: int) -> dict[str, torch.Tensor]:
    """A random state dict of the tiny model ``stem``, trunk in float16 as published."""
    spec = TINY[stem]
    torch.manual_seed(seed)
    model = build_model(spec["name"], spec["args"])
    # Random (not unit) norms and biases, so that a misplaced parameter shows.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gamma") or (name.endswith("weight") and param.ndim == 1):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.05 * torch.randn_like(param))
    model.set_compute_dtype(torch.float16)  # type: ignore[operator]
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def write_tiny_trellis(models_dir: Path, *, seed: int = 0,
                       occupancy_bias: float = 0.0) -> Path:
    """Write the tiny pipeline under ``models_dir``; return the TRELLIS folder.

    ``occupancy_bias`` is added to the decoder's output bias (logit offset), to
    make structures denser (positive) or empty (very negative).
    """
    root = models_dir / "trellis-image-large"
    ckpts = root / "ckpts"
    ckpts.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.json").write_text(json.dumps(pipeline_json(), indent=2))
    for i, (stem, spec) in enumerate(TINY.items()):
        (ckpts / f"{stem}.json").write_text(json.dumps(spec, indent=2))
        state = tiny_state_dict(stem, seed=seed + i)
        if stem.startswith("ss_dec"):
            state["out_layer.2.bias"] = state["out_layer.2.bias"] + occupancy_bias
        save_file(state, str(ckpts / f"{stem}.safetensors"))
    write_tiny_dinov2(models_dir / "dinov2-vitl14-reg", seed=seed)
    return root


def write_tiny_dinov2(folder: Path, *, seed: int = 0) -> Path:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    if folder.exists():
        shutil.rmtree(folder)
    torch.manual_seed(seed)
    config = Dinov2WithRegistersConfig(hidden_size=COND_CHANNELS, num_hidden_layers=2,
                                       num_attention_heads=2, mlp_ratio=2,
                                       image_size=518, patch_size=14, num_register_tokens=4)
    Dinov2WithRegistersModel(config).save_pretrained(folder)
    return folder
