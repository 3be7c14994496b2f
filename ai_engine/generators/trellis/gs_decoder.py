"""The structured-latent Gaussian decoder (``SLatGaussianDecoder``) and its Gaussians.

Network: a linear input layer, an absolute sin/cos position embedding of the
voxel coordinates, ``num_blocks`` pre-norm transformer blocks with
shifted-window self-attention (``swin``: windows of ``window_size`` voxels,
every odd block shifted by half a window), a layer norm without affine
parameters and a linear layer giving, per voxel, ``num_gaussians`` sets of
(offset 3, colour 3, scale 3, rotation 4, opacity 1), stored field by field.

Gaussians (``representation_config``), in TRELLIS's frame (Z up, the unit cube
``[-0.5, 0.5]³``), each raw field first multiplied by its ``lr`` factor:

* position: voxel centre ``(p + 0.5) / R - 0.5`` plus
  ``tanh(offset + perturbation) * voxel_size / (2 R)``; the fixed perturbation
  (buffer ``offset_perturbation``) spreads a voxel's Gaussians over a
  Hammersley pattern;
* colour: the raw degree-0 spherical-harmonic coefficients;
* scale: ``sqrt(act(raw + act⁻¹(scaling_bias))² + filter²)`` with ``act`` the
  configured activation (softplus or exp) and ``filter`` the 3D filter size;
* rotation: ``normalize(raw + (1, 0, 0, 0))``, ``w, x, y, z``;
* opacity: ``sigmoid(raw + logit(opacity_bias))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ai_engine.generators.trellis.layers import (
    TransformerBlock,
    cast_trunk,
    hammersley,
    sincos_position_embedding,
)
from ai_engine.generators.trellis.sparse import SparseTensor

# Field order and width per Gaussian of the decoder's output rows.
_FIELDS = (("_xyz", 3), ("_features_dc", 3), ("_scaling", 3), ("_rotation", 4), ("_opacity", 1))


@dataclass
class GaussianTensors:
    """Activated Gaussians as tensors (TRELLIS frame), ready for conversion."""

    positions: Tensor  # [G, 3]
    sh_dc: Tensor  # [G, 3]
    opacity_logits: Tensor  # [G]
    log_scales: Tensor  # [G, 3]
    rotations: Tensor  # [G, 4] unit, w x y z


class SLatGaussianDecoder(nn.Module):
    """Per-voxel Gaussian parameters from a structured latent."""

    offset_perturbation: Tensor

    def __init__(self, *, resolution: int, model_channels: int, latent_channels: int,
                 num_blocks: int, num_heads: int | None = None, num_head_channels: int = 64,
                 mlp_ratio: float = 4, attn_mode: Literal["swin", "full"] = "swin",
                 window_size: int = 8, pe_mode: Literal["ape", "rope"] = "ape",
                 use_fp16: bool = False, use_checkpoint: bool = False,
                 qk_rms_norm: bool = False,
                 representation_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        if pe_mode != "ape" or attn_mode not in ("swin", "full"):
            raise ValueError("only pe_mode='ape' with attn_mode 'swin' or 'full' is implemented")
        if representation_config is None:
            raise ValueError("the Gaussian decoder needs its representation_config")
        del use_checkpoint  # gradient checkpointing is a training option
        self.resolution = resolution
        self.model_channels = model_channels
        self.attn_mode = attn_mode
        self.window_size = window_size
        self.use_fp16 = use_fp16
        self.config = dict(representation_config)
        self.num_gaussians = int(self.config["num_gaussians"])
        heads = num_heads or model_channels // num_head_channels
        self.input_layer = nn.Linear(latent_channels, model_channels)
        self.blocks = nn.ModuleList([
            TransformerBlock(model_channels, heads, mlp_ratio=mlp_ratio, qk_rms_norm=qk_rms_norm)
            for _ in range(num_blocks)
        ])
        self.out_layer = nn.Linear(model_channels,
                                   self.num_gaussians * sum(width for _, width in _FIELDS))
        points = torch.tensor(hammersley(self.num_gaussians), dtype=torch.float32)
        self.register_buffer("offset_perturbation",
                             torch.atanh((points * 2 - 1) / float(self.config["voxel_size"])))
        self.compute_dtype = torch.float32

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        cast_trunk(self.blocks, dtype)
        self.compute_dtype = dtype

    def forward(self, x: SparseTensor) -> Tensor:
        """Raw output rows ``[N, num_gaussians * 14]`` (float32) for the latent ``x``."""
        h = self.input_layer(x.feats.to(self.input_layer.weight.dtype))
        h = h + sincos_position_embedding(x.coords[:, 1:], self.model_channels).to(h.dtype)
        h = h.to(self.compute_dtype)
        for i, block in enumerate(self.blocks):
            if self.attn_mode == "full":
                h = block(h, x.sequences)
            else:
                shift = self.window_size // 2 if i % 2 else 0
                h = block(h, x.structure.windows(window=self.window_size, shift=shift))
        h = h.to(self.out_layer.weight.dtype)
        out: Tensor = self.out_layer(F.layer_norm(h, h.shape[-1:]))
        return out

    def to_gaussians(self, coords: Tensor, raw: Tensor) -> GaussianTensors:
        """Activate the raw rows of voxels ``coords`` ``[N, 4]`` into Gaussians (TRELLIS frame)."""
        fields: dict[str, Tensor] = {}
        start = 0
        for name, width in _FIELDS:
            size = self.num_gaussians * width
            chunk = raw[:, start:start + size].reshape(-1, self.num_gaussians, width)
            fields[name] = chunk * float(self.config["lr"][name])
            start += size
        offset = fields["_xyz"]
        if self.config.get("perturb_offset", False):
            offset = offset + self.offset_perturbation
        offset = torch.tanh(offset) / self.resolution * 0.5 * float(self.config["voxel_size"])
        centres = (coords[:, 1:].float() + 0.5) / self.resolution
        positions = (centres[:, None] + offset).reshape(-1, 3) - 0.5
        scales = self._scale_activation(fields["_scaling"].reshape(-1, 3))
        rotations = fields["_rotation"].reshape(-1, 4)
        rotations = F.normalize(rotations + rotations.new_tensor([1.0, 0.0, 0.0, 0.0]), dim=-1)
        opacity_bias = float(self.config["opacity_bias"])
        opacity_logits = (fields["_opacity"].reshape(-1)
                          + math.log(opacity_bias / (1.0 - opacity_bias)))
        return GaussianTensors(positions=positions, sh_dc=fields["_features_dc"].reshape(-1, 3),
                               opacity_logits=opacity_logits, log_scales=torch.log(scales),
                               rotations=rotations)

    def _scale_activation(self, raw: Tensor) -> Tensor:
        bias = float(self.config["scaling_bias"])
        kind = self.config.get("scaling_activation", "exp")
        if kind == "softplus":
            scales = F.softplus(raw + math.log(math.expm1(bias)))
        elif kind == "exp":
            scales = torch.exp(raw + math.log(bias))
        else:
            raise ValueError(f"unknown scaling_activation {kind!r}")
        kernel = float(self.config.get("3d_filter_kernel_size", 0.0))
        return torch.sqrt(scales.square() + kernel ** 2)
