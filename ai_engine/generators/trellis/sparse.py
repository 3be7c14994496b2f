"""Sparse voxel tensors and the operations the TRELLIS models apply to them.

A :class:`SparseTensor` is a feature row per occupied voxel (``feats`` ``[N, C]``)
over a :class:`Structure`: the voxels' integer coordinates ``[N, 4]`` as
``(batch, x, y, z)``, rows of one batch element contiguous. Everything that
depends on the coordinates alone (neighbour tables, the down-sampled grid,
window partitions, sequence lengths) is computed once and cached on the
structure, so the twenty sampling steps over one structure pay for it once.

Submanifold 3×3×3 convolution is a gather-GEMM: the features of the 27
neighbours of each voxel are gathered into one row (a zero row stands in for
an empty neighbour) and multiplied by the kernel flattened to
``[out, 27 * in]``. The checkpoint stores the kernel as ``[out, kx, ky, kz, in]``
(spconv's layout), kernel index ``i`` along an axis reading the neighbour at
offset ``i - 1``: a cross-correlation like :func:`torch.nn.functional.conv3d`,
so the flattening needs no permutation. Output voxels are the input voxels.

Down-sampling by 2 averages the voxels that fall into one coarse voxel;
up-sampling copies each coarse voxel's features back to the fine voxels it was
made from. No CUDA extension is needed for any of it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ai_engine.generators.trellis.attention import Sequences, WindowPartition, window_partition

# Rows of the gathered ``[rows, 27 * in]`` matrix are built a slab at a time so
# the gather buffer stays under this many elements (256 MiB of fp16).
_GATHER_BUDGET_ELEMENTS = 1 << 27


class Structure:
    """Voxel coordinates of a batch of sparse grids, plus what is derived from them."""

    def __init__(self, coords: Tensor, *, batch_size: int | None = None) -> None:
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise ValueError(f"coords must be [N, 4] (batch, x, y, z), got {tuple(coords.shape)}")
        if coords.shape[0] == 0:
            raise ValueError("a sparse structure needs at least one voxel")
        coords = coords.to(torch.int32).contiguous()
        batch = coords[:, 0]
        if bool((batch[1:] < batch[:-1]).any()):
            raise ValueError("coords must be sorted by batch index")
        counts = torch.bincount(batch.long(), minlength=batch_size or 0)
        if batch_size is not None and counts.numel() != batch_size:
            raise ValueError(f"coords name batch {counts.numel() - 1} but batch_size={batch_size}")
        if bool((counts == 0).any()):
            raise ValueError("every batch element needs at least one voxel")
        self.coords = coords
        self.batch_size = int(counts.numel())
        self.sequences = Sequences(counts.tolist(), device=coords.device)
        self._cache: dict[Any, Any] = {}
        # Set on a structure made by :meth:`downsampled`: the fine structure and,
        # for each fine voxel, the row of its coarse voxel.
        self.parent: tuple[Structure, Tensor] | None = None

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    @property
    def device(self) -> torch.device:
        return self.coords.device

    def repeat(self, times: int) -> Structure:
        """The same voxels for ``times`` times the batch (batch-major copies)."""
        copies = []
        for copy in range(times):
            shifted = self.coords.clone()
            shifted[:, 0] += copy * self.batch_size
            copies.append(shifted)
        return Structure(torch.cat(copies), batch_size=self.batch_size * times)

    def _linear_keys(self, coords: Tensor, extent: Tensor) -> Tensor:
        key = coords[:, 0].long()
        for axis in range(3):
            key = key * extent[axis] + coords[:, axis + 1].long()
        return key

    def neighbours(self, kernel_size: int) -> Tensor:
        """``[N, kernel_size**3]`` row of each voxel's neighbour, ``N`` where none.

        Column ``(i * k + j) * k + l`` holds the neighbour at offset
        ``(i, j, l) - k // 2`` along (x, y, z).
        """
        key = ("neighbours", kernel_size)
        if key not in self._cache:
            self._cache[key] = self._build_neighbours(kernel_size)
        table: Tensor = self._cache[key]
        return table

    def _build_neighbours(self, kernel_size: int) -> Tensor:
        radius = kernel_size // 2
        # Shift coordinates by the radius so every neighbour has non-negative
        # coordinates inside ``extent`` and linear keys never alias.
        spatial = self.coords[:, 1:].long() + radius
        extent = spatial.amax(0) + radius + 1
        base = torch.cat([self.coords[:, :1].long(), spatial], dim=1)
        keys = self._linear_keys(base, extent)
        sorted_keys, order = torch.sort(keys)
        axis_offsets = torch.arange(-radius, radius + 1, device=self.device)
        offsets = torch.cartesian_prod(axis_offsets, axis_offsets, axis_offsets)  # x-major
        offsets = torch.cat([torch.zeros_like(offsets[:, :1]), offsets], dim=1)
        query = self._linear_keys((base[:, None, :] + offsets[None]).reshape(-1, 4), extent)
        found = torch.searchsorted(sorted_keys, query).clamp_(max=self.num_voxels - 1)
        hit = sorted_keys[found] == query
        rows = torch.where(hit, order[found], torch.full_like(found, self.num_voxels))
        return rows.view(self.num_voxels, kernel_size ** 3)

    def downsampled(self, factor: int) -> Structure:
        """The structure of voxels ``floor(p / factor)``; its ``parent`` links back here."""
        key = ("down", factor)
        if key not in self._cache:
            coarse = self.coords.clone()
            coarse[:, 1:] = torch.div(coarse[:, 1:], factor, rounding_mode="floor")
            extent = coarse[:, 1:].long().amax(0) + 1
            unique_keys, inverse = torch.unique(self._linear_keys(coarse, extent),
                                                sorted=True, return_inverse=True)
            coords = torch.empty(unique_keys.numel(), 4, dtype=torch.int32, device=self.device)
            rest = unique_keys
            for axis in (2, 1, 0):
                coords[:, axis + 1] = rest % extent[axis]
                rest = torch.div(rest, extent[axis], rounding_mode="floor")
            coords[:, 0] = rest
            structure = Structure(coords, batch_size=self.batch_size)
            structure.parent = (self, inverse)
            self._cache[key] = structure
        down: Structure = self._cache[key]
        return down

    def windows(self, *, window: int, shift: int) -> WindowPartition:
        key = ("windows", window, shift)
        if key not in self._cache:
            self._cache[key] = window_partition(self.coords, window=window, shift=shift)
        partition: WindowPartition = self._cache[key]
        return partition

    def cached(self, key: Any) -> Any:
        """A value a model cached on this structure, or None."""
        return self._cache.get(key)

    def cache(self, key: Any, value: Any) -> None:
        self._cache[key] = value


class SparseTensor:
    """Feature rows ``[N, C]`` over a :class:`Structure` of N voxels."""

    def __init__(self, feats: Tensor, structure: Structure) -> None:
        if feats.shape[0] != structure.num_voxels:
            raise ValueError(f"{feats.shape[0]} feature rows for {structure.num_voxels} voxels")
        self.feats = feats
        self.structure = structure

    @property
    def coords(self) -> Tensor:
        return self.structure.coords

    @property
    def sequences(self) -> Sequences:
        return self.structure.sequences

    def replace(self, feats: Tensor) -> SparseTensor:
        return SparseTensor(feats, self.structure)

    def dense(self, resolution: int) -> Tensor:
        """``[B, C, R, R, R]`` grid with zeros where no voxel is (for checks)."""
        batch = self.structure.batch_size
        grid = self.feats.new_zeros(batch, resolution, resolution, resolution,
                                    self.feats.shape[1])
        c = self.coords.long()
        grid[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = self.feats
        return grid.permute(0, 4, 1, 2, 3).contiguous()


class ConvKernel(nn.Module):
    """The parameters of a 3D convolution in spconv's ``[out, kx, ky, kz, in]`` layout."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, kernel_size, kernel_size,
                                               kernel_size, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        bound = (in_channels * kernel_size ** 3) ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)


class SparseConv3d(nn.Module):
    """Submanifold convolution: outputs at the input voxels, by gather-GEMM."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *,
                 bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("submanifold convolution needs an odd kernel size")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.conv = ConvKernel(in_channels, out_channels, kernel_size, bias=bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        table = x.structure.neighbours(self.kernel_size)
        feats = x.feats
        # One zero row at index N stands in for every missing neighbour.
        padded = torch.cat([feats, feats.new_zeros(1, feats.shape[1])])
        weight = self.conv.weight.reshape(self.out_channels, -1).to(feats.dtype)
        bias = None if self.conv.bias is None else self.conv.bias.to(feats.dtype)
        taps = table.shape[1]
        slab = max(1, _GATHER_BUDGET_ELEMENTS // (taps * self.in_channels))
        out = feats.new_empty(feats.shape[0], self.out_channels)
        for start in range(0, feats.shape[0], slab):
            rows = table[start:start + slab]
            gathered = padded[rows].view(rows.shape[0], taps * self.in_channels)
            if bias is None:
                torch.mm(gathered, weight.t(), out=out[start:start + slab])
            else:
                torch.addmm(bias, gathered, weight.t(), out=out[start:start + slab])
        return x.replace(out)


    def forward_upsampled(self, coarse: SparseTensor) -> SparseTensor:
        """``self(upsample(coarse))`` without building the up-sampled features.

        Every fine voxel holds a copy of its coarse parent, so each kernel tap
        multiplies parent features: one product ``[Nc, in] @ [in, 27 * out]`` at
        the coarse resolution, then a gather-sum of 27 ``out``-wide rows per fine
        voxel. For the wide input of the first decoder block this moves and
        multiplies a fraction of what the plain convolution would.
        """
        if coarse.structure.parent is None:
            raise ValueError("forward_upsampled needs a tensor made by downsample")
        fine, parent = coarse.structure.parent
        taps = self.kernel_size ** 3
        rows = fine.cached(("upsampled_taps", self.kernel_size))
        if rows is None:
            table = fine.neighbours(self.kernel_size)
            parent_ext = torch.cat([parent, parent.new_tensor([coarse.structure.num_voxels])])
            rows = parent_ext[table] * taps + torch.arange(taps, device=table.device)
            fine.cache(("upsampled_taps", self.kernel_size), rows)
        feats = coarse.feats
        weight = self.conv.weight.to(feats.dtype).reshape(self.out_channels, taps,
                                                          self.in_channels)
        per_tap = feats @ weight.transpose(0, 1).reshape(taps * self.out_channels, -1).t()
        per_tap = torch.cat([per_tap.view(-1, self.out_channels),
                             per_tap.new_zeros(taps, self.out_channels)])
        out = torch.empty(fine.num_voxels, self.out_channels, dtype=feats.dtype,
                          device=feats.device)
        accumulate = torch.promote_types(feats.dtype, torch.float32)
        slab = max(1, _GATHER_BUDGET_ELEMENTS // (taps * self.out_channels))
        for start in range(0, fine.num_voxels, slab):
            gathered = per_tap[rows[start:start + slab]]
            out[start:start + slab] = gathered.sum(1, dtype=accumulate).to(feats.dtype)
        if self.conv.bias is not None:
            out += self.conv.bias.to(feats.dtype)
        return SparseTensor(out, fine)


def downsample(x: SparseTensor, factor: int) -> SparseTensor:
    """Average the voxels that share a coarse voxel ``floor(p / factor)``."""
    coarse = x.structure.downsampled(factor)
    assert coarse.parent is not None
    _, inverse = coarse.parent
    counts = coarse.cached("child_counts")
    if counts is None:
        counts = torch.bincount(inverse, minlength=coarse.num_voxels).to(torch.float32)
        coarse.cache("child_counts", counts)
    # Sum in float32 at least: eight float16 children can lose digits.
    dtype = torch.promote_types(x.feats.dtype, torch.float32)
    sums = torch.zeros(coarse.num_voxels, x.feats.shape[1], dtype=dtype, device=x.feats.device)
    sums.index_add_(0, inverse, x.feats.to(dtype))
    return SparseTensor((sums / counts[:, None]).to(x.feats.dtype), coarse)


def upsample(x: SparseTensor) -> SparseTensor:
    """Copy each coarse voxel's features to the fine voxels it was averaged from."""
    if x.structure.parent is None:
        raise ValueError("upsample needs a tensor made by downsample")
    fine, inverse = x.structure.parent
    return SparseTensor(x.feats[inverse], fine)
