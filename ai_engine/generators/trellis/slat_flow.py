"""The structured-latent flow transformer (``SLatFlowModel``).

It predicts the flow velocity of the 8 latent channels on every occupied voxel
of the 64³ structure. A linear input layer, then residual blocks of sparse
3×3×3 convolutions at full resolution, the last of which down-samples by 2
(``patch_size``); an absolute sin/cos position embedding of the coarse voxels;
``num_blocks`` transformer blocks (full self-attention over each sample's
voxels, cross-attention to the image tokens, MLP, AdaLN from the timestep);
residual blocks back up to full resolution, each fed the matching input
block's output as a skip connection; a layer norm without affine parameters
and a linear output layer.

A residual block: optional down/up-sampling first, then layer norm, SiLU,
convolution, layer norm modulated by the timestep (``x * (1 + scale) + shift``,
scale first in the embedding), SiLU, convolution, plus a (linear) skip. The
up-sampling block computes the same thing without materialising the
up-sampled input (see :meth:`SparseConv3d.forward_upsampled`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ai_engine.generators.trellis.layers import (
    LayerNorm32,
    ModulatedCrossBlock,
    TimestepEmbedder,
    cast_trunk,
    sincos_position_embedding,
)
from ai_engine.generators.trellis.sparse import SparseConv3d, SparseTensor, downsample


class SparseResBlock3d(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, *,
                 resample: Literal["down", "up"] | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.resample = resample
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(out_channels, elementwise_affine=False, eps=1e-6)
        self.conv1 = SparseConv3d(channels, out_channels, 3)
        self.conv2 = SparseConv3d(out_channels, out_channels, 3)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.skip_connection: nn.Module = (nn.Linear(channels, out_channels)
                                           if channels != out_channels else nn.Identity())

    def forward(self, x: SparseTensor, emb: Tensor) -> SparseTensor:
        scale, shift = self.emb_layers(emb).to(x.feats.dtype).chunk(2, dim=1)
        if self.resample == "up":
            # Norm, SiLU and the skip projection act voxel by voxel, so they run on
            # the coarse voxels before the copy; the convolution folds the copy in.
            assert x.structure.parent is not None
            parent = x.structure.parent[1]
            h = self.conv1.forward_upsampled(x.replace(F.silu(self.norm1(x.feats))))
            skip = self.skip_connection(x.feats)[parent]
        else:
            if self.resample == "down":
                x = downsample(x, 2)
            h = self.conv1(x.replace(F.silu(self.norm1(x.feats))))
            skip = self.skip_connection(x.feats)
        h_feats = h.sequences.modulate(self.norm2(h.feats), shift, scale)
        h = self.conv2(h.replace(F.silu(h_feats)))
        return h.replace(h.feats + skip)


class SLatFlowModel(nn.Module):
    """Velocity of a structured latent (sparse, 8 channels) given time and image tokens."""

    def __init__(self, *, resolution: int, in_channels: int, model_channels: int,
                 cond_channels: int, out_channels: int, num_blocks: int,
                 num_heads: int | None = None, num_head_channels: int = 64,
                 mlp_ratio: float = 4, patch_size: int = 2, num_io_res_blocks: int = 2,
                 io_block_channels: list[int] | None = None,
                 pe_mode: Literal["ape", "rope"] = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, use_skip_connection: bool = True,
                 share_mod: bool = False, qk_rms_norm: bool = False,
                 qk_rms_norm_cross: bool = False) -> None:
        super().__init__()
        if pe_mode != "ape" or share_mod or not use_skip_connection or not io_block_channels:
            raise ValueError("only pe_mode='ape', no share_mod, with skip connections and IO "
                             "blocks is implemented (the published checkpoints use that)")
        if 2 ** len(io_block_channels) != patch_size:
            raise ValueError("patch_size must be 2 ** len(io_block_channels)")
        del use_checkpoint  # gradient checkpointing is a training option
        self.resolution = resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.use_fp16 = use_fp16
        heads = num_heads or model_channels // num_head_channels
        self.t_embedder = TimestepEmbedder(model_channels)
        self.input_layer = nn.Linear(in_channels, io_block_channels[0])
        inputs: list[nn.Module] = []
        for chs, next_chs in zip(io_block_channels, [*io_block_channels[1:], model_channels],
                                 strict=True):
            inputs.extend(SparseResBlock3d(chs, model_channels)
                          for _ in range(num_io_res_blocks - 1))
            inputs.append(SparseResBlock3d(chs, model_channels, next_chs, resample="down"))
        self.input_blocks = nn.ModuleList(inputs)
        self.blocks = nn.ModuleList([
            ModulatedCrossBlock(model_channels, cond_channels, heads, mlp_ratio=mlp_ratio,
                                qk_rms_norm=qk_rms_norm, qk_rms_norm_cross=qk_rms_norm_cross)
            for _ in range(num_blocks)
        ])
        outputs: list[nn.Module] = []
        reversed_chs = list(reversed(io_block_channels))
        for chs, prev_chs in zip(reversed_chs, [model_channels, *reversed_chs[:-1]], strict=True):
            outputs.append(SparseResBlock3d(prev_chs * 2, model_channels, chs, resample="up"))
            outputs.extend(SparseResBlock3d(chs * 2, model_channels, chs)
                           for _ in range(num_io_res_blocks - 1))
        self.out_blocks = nn.ModuleList(outputs)
        self.out_layer = nn.Linear(io_block_channels[0], out_channels)
        self.compute_dtype = torch.float32

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        for part in (self.input_blocks, self.blocks, self.out_blocks):
            cast_trunk(part, dtype)
        self.compute_dtype = dtype

    def _position_embedding(self, h: SparseTensor) -> Tensor:
        key = ("pos_emb", self.model_channels, self.compute_dtype)
        embedding = h.structure.cached(key)
        if embedding is None:
            embedding = sincos_position_embedding(h.coords[:, 1:], self.model_channels)
            embedding = embedding.to(self.compute_dtype)
            h.structure.cache(key, embedding)
        out: Tensor = embedding
        return out

    def forward(self, x: SparseTensor, t: Tensor, cond: Tensor) -> SparseTensor:
        """``x`` ``[N, in]`` sparse, ``t`` ``[B]`` (0..1000), ``cond`` ``[B, M, Cc]`` → velocity."""
        h = x.replace(self.input_layer(x.feats.to(self.input_layer.weight.dtype))
                      .to(self.compute_dtype))
        t_emb = self.t_embedder(t).to(self.compute_dtype)
        context = cond.to(self.compute_dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, t_emb)
            skips.append(h.feats)
        feats = h.feats + self._position_embedding(h)
        for transformer_block in self.blocks:
            feats = transformer_block(feats, h.sequences, t_emb, context)
        h = h.replace(feats)
        for block, skip in zip(self.out_blocks, reversed(skips), strict=True):
            h = block(h.replace(torch.cat([h.feats, skip], dim=1)), t_emb)
        feats = h.feats.to(self.out_layer.weight.dtype)
        out = self.out_layer(F.layer_norm(feats, feats.shape[-1:]))
        return h.replace(out.to(x.feats.dtype))
