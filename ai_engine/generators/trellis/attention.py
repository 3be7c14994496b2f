"""Scaled dot-product attention over packed variable-length sequences.

Every TRELLIS model keeps its tokens packed along one axis, ``[N, H, D]`` for N
tokens of H heads: the sparse models because each batch element has its own
number of voxels, the dense one because packing costs nothing there. A
:class:`Sequences` says where each sequence starts and ends. Attention never
crosses a sequence boundary.

All attention goes through :func:`torch.nn.functional.scaled_dot_product_attention`
(flash or memory-efficient kernels on CUDA, plain arithmetic on the CPU); no
extension is needed. Sequences of one length are viewed as a dense batch at no
cost; uneven ones are padded to the longest and the padded keys masked out.

Shifted-window attention (the Gaussian decoder's ``swin`` mode) is the same
thing over other sequences: :func:`window_partition` sorts the voxels by the
window of edge ``window`` that holds them after shifting every coordinate by
``shift``, each window becomes one sequence, and :func:`windowed_attention`
undoes the sort afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor

_PAD_MULTIPLE = 8


class Sequences:
    """Lengths of the sequences packed one after another along a tensor's first axis."""

    def __init__(self, lengths: Sequence[int], *, device: torch.device | str) -> None:
        self.lengths = tuple(int(n) for n in lengths)
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"every sequence needs at least one token, got {self.lengths}")
        self.device = torch.device(device)
        self.count = len(self.lengths)
        self.total = sum(self.lengths)
        self.max_length = max(self.lengths)
        self.uniform = all(n == self.max_length for n in self.lengths)
        # Uneven sequences are padded to a multiple of 8 tokens: the fused CUDA
        # kernels want aligned key lengths when a mask is given.
        self.padded_length = (self.max_length if self.uniform
                              else -(-self.max_length // _PAD_MULTIPLE) * _PAD_MULTIPLE)

    @classmethod
    def uniform_batch(cls, count: int, length: int, *, device: torch.device | str) -> Sequences:
        return cls([length] * count, device=device)

    @cached_property
    def offsets(self) -> Tensor:
        """``[count + 1]`` start of each sequence, then the total."""
        lengths = torch.tensor(self.lengths, dtype=torch.long, device=self.device)
        return F.pad(torch.cumsum(lengths, 0), (1, 0))

    @cached_property
    def index(self) -> Tensor:
        """``[total]`` the sequence each packed row belongs to."""
        lengths = torch.tensor(self.lengths, dtype=torch.long, device=self.device)
        return torch.repeat_interleave(torch.arange(self.count, device=self.device), lengths)

    @cached_property
    def _padded_rows(self) -> Tensor:
        """``[total]`` row of each packed token in the ``[count * padded_length]`` layout."""
        position = torch.arange(self.total, device=self.device) - self.offsets[self.index]
        return self.index * self.padded_length + position

    @cached_property
    def key_mask(self) -> Tensor:
        """``[count, 1, 1, padded_length]`` True where a padded position holds a token."""
        valid = torch.zeros(self.count * self.padded_length, dtype=torch.bool,
                            device=self.device)
        valid[self._padded_rows] = True
        return valid.view(self.count, 1, 1, self.padded_length)

    def pad(self, packed: Tensor) -> Tensor:
        """``[total, *rest]`` → ``[count, padded_length, *rest]`` (zeros where padded)."""
        if self.uniform:
            return packed.view(self.count, self.max_length, *packed.shape[1:])
        padded = packed.new_zeros(self.count * self.padded_length, *packed.shape[1:])
        padded[self._padded_rows] = packed
        return padded.view(self.count, self.padded_length, *packed.shape[1:])

    def unpad(self, padded: Tensor) -> Tensor:
        """Inverse of :meth:`pad`."""
        flat = padded.reshape(self.count * self.padded_length, *padded.shape[2:])
        return flat if self.uniform else flat[self._padded_rows]

    def per_sequence(self, packed: Tensor, values: Tensor, *, mul: bool) -> Tensor:
        """``packed * values[seq]`` (``mul``) or ``packed + values[seq]`` row by row.

        ``packed`` is ``[total, C]``, ``values`` ``[count, C]``. Equal lengths use a
        broadcasting view instead of gathering a ``[total, C]`` copy of ``values``.
        """
        if self.uniform:
            view = packed.view(self.count, self.max_length, -1)
            row_values = values[:, None]
            out = view * row_values if mul else view + row_values
            return out.view(packed.shape)
        gathered = values[self.index]
        return packed * gathered if mul else packed + gathered

    def modulate(self, packed: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        """Adaptive layer-norm modulation ``x * (1 + scale) + shift`` per sequence."""
        if self.uniform:
            view = packed.view(self.count, self.max_length, -1)
            return torch.addcmul(shift[:, None], view, 1 + scale[:, None]).view(packed.shape)
        index = self.index
        return torch.addcmul(shift[index], packed, 1 + scale[index])


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, *, q_seqs: Sequences,
                     kv_seqs: Sequences) -> Tensor:
    """Attention of each query sequence over the key/value sequence of the same index.

    ``q`` is ``[q_seqs.total, H, D]``, ``k`` and ``v`` ``[kv_seqs.total, H, D]``;
    returns ``[q_seqs.total, H, D]``. Scale ``1/sqrt(D)``, no dropout.
    """
    if q_seqs.count != kv_seqs.count:
        raise ValueError(f"{q_seqs.count} query sequences but {kv_seqs.count} key sequences")
    mask = None if kv_seqs.uniform else kv_seqs.key_mask
    qp = q_seqs.pad(q).transpose(1, 2)  # [B, H, Lq, D]
    kp = kv_seqs.pad(k).transpose(1, 2)
    vp = kv_seqs.pad(v).transpose(1, 2)
    out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask)
    return q_seqs.unpad(out.transpose(1, 2))


class WindowPartition:
    """Voxels sorted by window: ``order`` (sorted → original) and the window lengths."""

    def __init__(self, order: Tensor, windows: Sequences) -> None:
        self.order = order
        self.windows = windows

    @cached_property
    def inverse(self) -> Tensor:
        inverse = torch.empty_like(self.order)
        inverse[self.order] = torch.arange(self.order.numel(), device=self.order.device)
        return inverse


def window_partition(coords: Tensor, *, window: int, shift: int) -> WindowPartition:
    """Group voxels ``coords`` ``[N, 4]`` (batch, x, y, z) by the window that holds them.

    A voxel at ``p`` lies in window ``floor((p + shift) / window)`` along each
    axis, within its own batch element; windows with no voxel do not exist.
    """
    shifted = coords[:, 1:].long() + shift
    cell = torch.div(shifted, window, rounding_mode="floor")
    extent = cell.amax(0) + 1 if cell.numel() else torch.ones(3, dtype=torch.long)
    key = coords[:, 0].long()
    for axis in range(3):
        key = key * extent[axis] + cell[:, axis]
    sorted_key, order = torch.sort(key, stable=True)
    _, counts = torch.unique_consecutive(sorted_key, return_counts=True)
    return WindowPartition(order, Sequences(counts.tolist(), device=coords.device))


def windowed_attention(q: Tensor, k: Tensor, v: Tensor, partition: WindowPartition) -> Tensor:
    """Self-attention of ``[N, H, D]`` tokens restricted to their window."""
    order = partition.order
    out = varlen_attention(q[order], k[order], v[order], q_seqs=partition.windows,
                           kv_seqs=partition.windows)
    return out[partition.inverse]
