"""Building blocks shared by the TRELLIS models, named as in the checkpoints.

Tokens are packed ``[N, C]`` rows with a :class:`Sequences` saying which rows
form one sequence (one batch element, or one window); the dense sparse-structure
model packs its ``[B, L, C]`` tokens the same way. Conditioning and timestep
embeddings are per sequence: ``[B, ...]``.

Precision follows the published models: the transformer trunk's linear and
convolution weights run in the compute dtype (float16 as published, or bfloat16,
or float32 on the CPU); layer norms, the RMS norms of queries and keys, the
timestep embedder and the input and output layers work in float32.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ai_engine.generators.trellis import fused
from ai_engine.generators.trellis.attention import (
    Sequences,
    WindowPartition,
    varlen_attention,
    windowed_attention,
)
from ai_engine.generators.trellis.sparse import ConvKernel


def is_half(x: Tensor) -> bool:
    return x.dtype in (torch.float16, torch.bfloat16)


def layer_norm_32(x: Tensor, shape: tuple[int, ...], weight: Tensor | None,
                  bias: Tensor | None, eps: float) -> Tensor:
    """Layer norm over the last ``shape`` axes in float32 (at least), in ``x``'s dtype.

    A 16-bit input goes straight to the kernel with float32 parameters where the
    kernel takes mixed dtypes: it accumulates in float32 and rounds once on
    output, as an explicit upcast would, without two extra passes over the tensor.
    """
    if is_half(x):
        try:
            return F.layer_norm(x, shape, weight, bias, eps)
        except RuntimeError:  # no mixed-dtype kernel for this input
            return F.layer_norm(x.float(), shape, weight, bias, eps).to(x.dtype)
    return F.layer_norm(x, shape, weight, bias, eps)


class LayerNorm32(nn.LayerNorm):
    """Layer norm computed in float32 (at least), returned in the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm_32(x, tuple(self.normalized_shape), self.weight, self.bias, self.eps)


class MultiHeadRMSNorm(nn.Module):
    """Per-head RMS norm of queries or keys: ``normalize(x) * gamma * sqrt(D)``."""

    def __init__(self, head_dim: int, heads: int) -> None:
        super().__init__()
        self.scale = head_dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(heads, head_dim))

    def forward(self, x: Tensor) -> Tensor:  # [N, H, D]
        if is_half(x):
            return (F.normalize(x.float(), dim=-1) * self.gamma * self.scale).to(x.dtype)
        return F.normalize(x, dim=-1) * self.gamma * self.scale


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the (×1000) flow time, then an MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: Tensor) -> Tensor:
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000.0)
                          * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        angles = t.float()[:, None] * freqs[None]
        embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        if self.frequency_size % 2:
            embedding = F.pad(embedding, (0, 1))
        out: Tensor = self.mlp(embedding.to(next(self.mlp.parameters()).dtype))
        return out


def sincos_position_embedding(positions: Tensor, channels: int) -> Tensor:
    """Absolute 3D position embedding ``[N, channels]`` (float32) of ``[N, 3]`` positions.

    Each axis gets ``channels // 6`` frequencies ``10000 ** (-i / (channels // 6))``
    as ``[sin..., cos...]``; the three axes follow one another and zeros pad
    the remainder.
    """
    freq_dim = channels // 3 // 2
    freqs = 1.0 / (10000.0 ** (torch.arange(freq_dim, dtype=torch.float32,
                                            device=positions.device) / freq_dim))
    angles = positions.reshape(-1).float()[:, None] * freqs[None]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    embedding = embedding.reshape(positions.shape[0], -1)
    return F.pad(embedding, (0, channels - embedding.shape[1]))


class FeedForwardNet(nn.Module):
    def __init__(self, channels: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, channels))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.mlp(x)
        return out


class SelfAttention(nn.Module):
    """Multi-head self-attention over packed sequences or windows."""

    def __init__(self, channels: int, num_heads: int, *, qk_rms_norm: bool = False,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.to_qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.qk_rms_norm = qk_rms_norm
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, seqs: Sequences | WindowPartition) -> Tensor:
        qkv = self.to_qkv(x).view(x.shape[0], 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(dim=1)
        if self.qk_rms_norm and is_half(x):
            q, k = fused.call("qk_rms_norm", q, k, self.q_rms_norm.gamma, self.k_rms_norm.gamma)
        elif self.qk_rms_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        if isinstance(seqs, WindowPartition):
            h = windowed_attention(q, k, v, seqs)
        else:
            h = varlen_attention(q, k, v, q_seqs=seqs, kv_seqs=seqs)
        out: Tensor = self.to_out(h.reshape(x.shape[0], -1))
        return out


class CrossAttention(nn.Module):
    """Multi-head attention of packed query sequences over a dense context ``[B, M, Cc]``."""

    def __init__(self, channels: int, ctx_channels: int, num_heads: int, *,
                 qk_rms_norm: bool = False, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.to_q = nn.Linear(channels, channels, bias=qkv_bias)
        self.to_kv = nn.Linear(ctx_channels, channels * 2, bias=qkv_bias)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.qk_rms_norm = qk_rms_norm
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, seqs: Sequences, context: Tensor) -> Tensor:
        batch, length = context.shape[:2]
        q = self.to_q(x).view(x.shape[0], self.num_heads, self.head_dim)
        kv = self.to_kv(context).view(batch * length, 2, self.num_heads, self.head_dim)
        k, v = kv.unbind(dim=1)
        if self.qk_rms_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        context_seqs = Sequences.uniform_batch(batch, length, device=x.device)
        h = varlen_attention(q, k, v, q_seqs=seqs, kv_seqs=context_seqs)
        out: Tensor = self.to_out(h.reshape(x.shape[0], -1))
        return out


class ModulatedCrossBlock(nn.Module):
    """Transformer block: self-attention, cross-attention to the image, MLP, with AdaLN.

    ``mod`` ``[B, C]`` (the timestep embedding) gives per-sequence shift, scale
    and gate for the self-attention and MLP branches; the cross-attention branch
    has an affine layer norm and no modulation.
    """

    def __init__(self, channels: int, ctx_channels: int, num_heads: int, *,
                 mlp_ratio: float = 4.0, qk_rms_norm: bool = False,
                 qk_rms_norm_cross: bool = False) -> None:
        super().__init__()
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = SelfAttention(channels, num_heads, qk_rms_norm=qk_rms_norm)
        self.cross_attn = CrossAttention(channels, ctx_channels, num_heads,
                                         qk_rms_norm=qk_rms_norm_cross)
        self.mlp = FeedForwardNet(channels, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))

    def forward(self, x: Tensor, seqs: Sequences, mod: Tensor, context: Tensor) -> Tensor:
        (shift_msa, scale_msa, gate_msa,
         shift_mlp, scale_mlp, gate_mlp) = self.adaLN_modulation(mod).chunk(6, dim=1)
        h = _norm_modulate(self.norm1, x, seqs, shift_msa, scale_msa)
        x = _gated_residual(x, self.self_attn(h, seqs), seqs, gate_msa)
        x = x + self.cross_attn(self.norm2(x), seqs, context)
        h = _norm_modulate(self.norm3, x, seqs, shift_mlp, scale_mlp)
        return _gated_residual(x, self.mlp(h), seqs, gate_mlp)


def _norm_modulate(norm: LayerNorm32, x: Tensor, seqs: Sequences, shift: Tensor,
                   scale: Tensor) -> Tensor:
    """``norm(x) * (1 + scale) + shift`` per sequence (``norm`` without affine)."""
    if seqs.uniform and is_half(x):
        out: Tensor = fused.call("layer_norm_modulate", seqs.pad(x), shift, scale, norm.eps)
        return out.view(x.shape)
    return seqs.modulate(norm(x), shift, scale)


def _gated_residual(x: Tensor, h: Tensor, seqs: Sequences, gate: Tensor) -> Tensor:
    """``x + h * gate`` per sequence."""
    if seqs.uniform and is_half(x):
        out: Tensor = fused.call("gated_add", seqs.pad(x), seqs.pad(h), gate)
        return out.view(x.shape)
    return x + seqs.per_sequence(h, gate, mul=True)


class TransformerBlock(nn.Module):
    """Plain pre-norm block (self-attention, MLP) of the structured-latent decoders."""

    def __init__(self, channels: int, num_heads: int, *, mlp_ratio: float = 4.0,
                 qk_rms_norm: bool = False) -> None:
        super().__init__()
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(channels, num_heads, qk_rms_norm=qk_rms_norm)
        self.mlp = FeedForwardNet(channels, mlp_ratio)

    def forward(self, x: Tensor, seqs: Sequences | WindowPartition) -> Tensor:
        x = x + self.attn(self.norm1(x), seqs)
        return x + self.mlp(self.norm2(x))


def cast_trunk(module: nn.Module, dtype: torch.dtype) -> None:
    """Put the linear and convolution weights under ``module`` in ``dtype``.

    The published models keep exactly these in float16 (norms stay float32);
    everything else a checkpoint holds stays float32.
    """
    for sub in module.modules():
        if isinstance(sub, nn.Linear | nn.Conv3d | ConvKernel):
            for param in sub.parameters(recurse=False):
                param.data = param.data.to(dtype)


def hammersley(count: int, dims: int = 3) -> np.ndarray:
    """The Hammersley point set: ``i / count`` then radical inverses in bases 2, 3, 5…"""
    primes = [2, 3, 5, 7, 11, 13]
    points = np.zeros((count, dims), dtype=np.float64)
    for i in range(count):
        points[i, 0] = i / count
        for d in range(1, dims):
            base, n, value, weight = primes[d - 1], i, 0.0, 1.0 / primes[d - 1]
            while n > 0:
                value += (n % base) * weight
                n //= base
                weight /= base
            points[i, d] = value
    return points
