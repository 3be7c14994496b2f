"""The sparse-structure flow transformer (``SparseStructureFlowModel``).

It predicts the flow velocity of the dense structure latent ``[B, 8, 16, 16, 16]``:
the latent is cut into ``patch_size³`` patches (one voxel each in the published
model, 4096 tokens), projected to the model width, given an absolute sin/cos
position embedding (stored in the checkpoint as ``pos_emb``), and passed through
``num_blocks`` blocks of self-attention, cross-attention to the image tokens and
an MLP, each modulated by the timestep (AdaLN). A final layer norm without
affine parameters and a linear layer give the velocity, reassembled to the grid.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ai_engine.generators.trellis.attention import Sequences
from ai_engine.generators.trellis.layers import (
    ModulatedCrossBlock,
    TimestepEmbedder,
    cast_trunk,
    sincos_position_embedding,
)


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """``[B, C, X, Y, Z]`` → ``[B, C * p³, X/p, Y/p, Z/p]``.

    Voxel offset ``(i, j, k)`` of channel ``c`` goes to channel ``c * p³ + (i * p + j) * p + k``.
    """
    if patch_size == 1:
        return x
    b, c, *sizes = x.shape
    p = patch_size
    x = x.reshape(b, c, sizes[0] // p, p, sizes[1] // p, p, sizes[2] // p, p)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * p ** 3, sizes[0] // p, sizes[1] // p, sizes[2] // p)


def unpatchify(x: Tensor, patch_size: int) -> Tensor:
    """Inverse of :func:`patchify`."""
    if patch_size == 1:
        return x
    b, cp, *sizes = x.shape
    p = patch_size
    x = x.reshape(b, cp // p ** 3, p, p, p, *sizes)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, cp // p ** 3, sizes[0] * p, sizes[1] * p, sizes[2] * p)


class SparseStructureFlowModel(nn.Module):
    """Velocity of the dense structure latent given time and image tokens."""

    pos_emb: Tensor

    def __init__(self, *, resolution: int, in_channels: int, model_channels: int,
                 cond_channels: int, out_channels: int, num_blocks: int,
                 num_heads: int | None = None, num_head_channels: int = 64,
                 mlp_ratio: float = 4, patch_size: int = 2,
                 pe_mode: Literal["ape", "rope"] = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, share_mod: bool = False,
                 qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False) -> None:
        super().__init__()
        if pe_mode != "ape" or share_mod:
            raise ValueError("only pe_mode='ape' without share_mod is implemented "
                             "(the published checkpoints use that)")
        del use_checkpoint  # gradient checkpointing is a training option
        self.resolution = resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.patch_size = patch_size
        self.use_fp16 = use_fp16
        heads = num_heads or model_channels // num_head_channels
        self.t_embedder = TimestepEmbedder(model_channels)
        side = resolution // patch_size
        grid = torch.stack(torch.meshgrid(*[torch.arange(side)] * 3, indexing="ij"), dim=-1)
        self.register_buffer("pos_emb",
                             sincos_position_embedding(grid.reshape(-1, 3), model_channels))
        self.input_layer = nn.Linear(in_channels * patch_size ** 3, model_channels)
        self.blocks = nn.ModuleList([
            ModulatedCrossBlock(model_channels, cond_channels, heads, mlp_ratio=mlp_ratio,
                                qk_rms_norm=qk_rms_norm, qk_rms_norm_cross=qk_rms_norm_cross)
            for _ in range(num_blocks)
        ])
        self.out_layer = nn.Linear(model_channels, out_channels * patch_size ** 3)
        self.compute_dtype = torch.float32

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Run the transformer blocks in ``dtype`` (their weights are cast)."""
        cast_trunk(self.blocks, dtype)
        self.compute_dtype = dtype

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Velocity ``[B, C, R, R, R]`` at ``x`` (same shape), times ``t`` ``[B]`` (0..1000),
        image tokens ``cond`` ``[B, M, Cc]``."""
        batch = x.shape[0]
        side = self.resolution // self.patch_size
        h = patchify(x, self.patch_size).reshape(batch, -1, side ** 3).transpose(1, 2)
        h = self.input_layer(h.to(self.input_layer.weight.dtype)) + self.pos_emb[None]
        tokens = h.shape[1]
        h = h.reshape(batch * tokens, -1).to(self.compute_dtype)
        t_emb = self.t_embedder(t).to(self.compute_dtype)
        context = cond.to(self.compute_dtype)
        seqs = Sequences.uniform_batch(batch, tokens, device=x.device)
        for block in self.blocks:
            h = block(h, seqs, t_emb, context)
        h = F.layer_norm(h.to(self.out_layer.weight.dtype), h.shape[-1:])
        h = self.out_layer(h).view(batch, tokens, -1).transpose(1, 2)
        h = h.reshape(batch, -1, side, side, side)
        return unpatchify(h, self.patch_size).to(x.dtype)
