"""The sparse-structure decoder (``SparseStructureDecoder``): latent grid → occupancy logits.

A dense 3D convolutional network: an input convolution to ``channels[0]``,
residual blocks in the middle, then for each entry of ``channels`` a few
residual blocks followed (except after the last) by an up-sampling block (a
convolution to ``8 × next`` channels and a 3D pixel shuffle, doubling the
resolution), and an output head (channel layer norm, SiLU, convolution). The
published decoder turns ``[B, 8, 16³]`` into ``[B, 1, 64³]`` logits; a voxel is
occupied where its logit is positive.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ai_engine.generators.trellis.layers import cast_trunk, layer_norm_32


class ChannelLayerNorm32(nn.LayerNorm):
    """Layer norm over the channel axis of ``[B, C, ...]``, computed in float32."""

    def forward(self, x: Tensor) -> Tensor:
        h = layer_norm_32(x.movedim(1, -1).contiguous(), tuple(self.normalized_shape),
                          self.weight, self.bias, self.eps)
        return h.movedim(-1, 1).contiguous()


def pixel_shuffle_3d(x: Tensor, factor: int) -> Tensor:
    """``[B, C * f³, X, Y, Z]`` → ``[B, C, X f, Y f, Z f]``.

    Channel ``(c, i, j, k)`` (c-major) goes to voxel offset ``(i, j, k)``.
    """
    b, c, x_size, y_size, z_size = x.shape
    out = c // factor ** 3
    x = x.reshape(b, out, factor, factor, factor, x_size, y_size, z_size)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, out, x_size * factor, y_size * factor, z_size * factor)


class ResBlock3d(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.norm1 = ChannelLayerNorm32(channels)
        self.norm2 = ChannelLayerNorm32(out_channels)
        self.conv1 = nn.Conv3d(channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip_connection: nn.Module = (nn.Conv3d(channels, out_channels, 1)
                                           if channels != out_channels else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        out: Tensor = h + self.skip_connection(x)
        return out


class UpsampleBlock3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return pixel_shuffle_3d(self.conv(x), 2)


class SparseStructureDecoder(nn.Module):
    """Occupancy logits ``[B, out, R·2^k, …]`` from the structure latent ``[B, latent, R, …]``."""

    def __init__(self, *, out_channels: int, latent_channels: int, num_res_blocks: int,
                 channels: list[int], num_res_blocks_middle: int = 2,
                 norm_type: str = "layer", use_fp16: bool = False) -> None:
        super().__init__()
        if norm_type != "layer":
            raise ValueError("only norm_type='layer' is implemented (the published decoder)")
        self.use_fp16 = use_fp16
        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[0])
                                            for _ in range(num_res_blocks_middle)])
        blocks: list[nn.Module] = []
        for i, ch in enumerate(channels):
            blocks.extend(ResBlock3d(ch) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                blocks.append(UpsampleBlock3d(ch, channels[i + 1]))
        self.blocks = nn.ModuleList(blocks)
        self.out_layer = nn.Sequential(ChannelLayerNorm32(channels[-1]), nn.SiLU(),
                                       nn.Conv3d(channels[-1], out_channels, 3, padding=1))
        self.compute_dtype = torch.float32

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        cast_trunk(self.middle_block, dtype)
        cast_trunk(self.blocks, dtype)
        self.compute_dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        h = self.input_layer(x.to(self.input_layer.weight.dtype)).to(self.compute_dtype)
        h = self.middle_block(h)
        for block in self.blocks:
            h = block(h)
        out: Tensor = self.out_layer(h.to(self.input_layer.weight.dtype))
        return out
