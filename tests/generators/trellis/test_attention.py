"""Variable-length and windowed attention against masked dense attention in float64."""

from __future__ import annotations

import pytest
import torch

from ai_engine.generators.trellis.attention import (
    Sequences,
    varlen_attention,
    window_partition,
    windowed_attention,
)


def masked_dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           allowed: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √D, over allowed keys) v, written out: ``[Nq, H, D]``."""
    scores = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v)


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


@pytest.mark.parametrize("lengths", [[5, 17, 1, 9], [6, 6, 6]])
def test_varlen_self_attention_stays_within_each_sequence(lengths: list[int]) -> None:
    seqs = Sequences(lengths, device="cpu")
    q, k, v = (rand(seqs.total, 3, 8, seed=i) for i in range(3))
    out = varlen_attention(q, k, v, q_seqs=seqs, kv_seqs=seqs)
    same = seqs.index[:, None] == seqs.index[None, :]
    torch.testing.assert_close(out, masked_dense_attention(q, k, v, same))


def test_varlen_cross_attention_from_uneven_queries_to_a_dense_context() -> None:
    q_seqs = Sequences([4, 11], device="cpu")
    kv_seqs = Sequences.uniform_batch(2, 7, device="cpu")
    q = rand(q_seqs.total, 2, 4, seed=1)
    k, v = rand(14, 2, 4, seed=2), rand(14, 2, 4, seed=3)
    out = varlen_attention(q, k, v, q_seqs=q_seqs, kv_seqs=kv_seqs)
    allowed = q_seqs.index[:, None] == kv_seqs.index[None, :]
    torch.testing.assert_close(out, masked_dense_attention(q, k, v, allowed))


def test_per_sequence_modulation_and_gating_match_gathered_values() -> None:
    for lengths in ([3, 5], [4, 4]):
        seqs = Sequences(lengths, device="cpu")
        x = rand(seqs.total, 6, seed=4)
        shift, scale = rand(2, 6, seed=5), rand(2, 6, seed=6)
        rows = seqs.index
        torch.testing.assert_close(seqs.modulate(x, shift, scale),
                                   x * (1 + scale[rows]) + shift[rows])
        torch.testing.assert_close(seqs.per_sequence(x, scale, mul=True), x * scale[rows])


@pytest.mark.parametrize("shift", [0, 2])
def test_windowed_attention_equals_masked_dense_attention(shift: int) -> None:
    window = 4
    gen = torch.Generator().manual_seed(11)
    occupied = torch.rand(2, 10, 10, 10, generator=gen) < 0.15
    coords = torch.nonzero(occupied).to(torch.int32)
    q, k, v = (rand(coords.shape[0], 2, 8, seed=20 + i) for i in range(3))
    partition = window_partition(coords, window=window, shift=shift)
    out = windowed_attention(q, k, v, partition)
    c = coords.long()
    cell = torch.div(c[:, 1:] + shift, window, rounding_mode="floor")
    same = (c[:, None, 0] == c[None, :, 0]) & (cell[:, None] == cell[None, :]).all(-1)
    torch.testing.assert_close(out, masked_dense_attention(q, k, v, same))


def test_window_partition_sorts_voxels_into_windows_of_bounded_extent() -> None:
    gen = torch.Generator().manual_seed(12)
    coords = torch.nonzero(torch.rand(1, 16, 16, 16, generator=gen) < 0.2).to(torch.int32)
    partition = window_partition(coords, window=8, shift=4)
    assert partition.windows.total == coords.shape[0]
    torch.testing.assert_close(partition.order[partition.inverse], torch.arange(len(coords)))
    sorted_coords = coords[partition.order].long()
    start = 0
    for length in partition.windows.lengths:
        cells = torch.div(sorted_coords[start:start + length, 1:] + 4, 8, rounding_mode="floor")
        assert (cells == cells[0]).all()
        start += length
