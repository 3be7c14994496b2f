"""Sparse tensors against dense computations on the densified grid."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from ai_engine.generators.trellis import sparse
from ai_engine.generators.trellis.sparse import (
    SparseConv3d,
    SparseTensor,
    Structure,
    downsample,
    upsample,
)


def random_coords(*, batch: int, resolution: int, fill: float, seed: int) -> torch.Tensor:
    """Occupied voxels of ``batch`` random grids (every grid non-empty), batch-sorted."""
    gen = torch.Generator().manual_seed(seed)
    occupied = torch.rand(batch, resolution, resolution, resolution, generator=gen) < fill
    occupied[:, 0, 0, 0] = True  # a corner voxel: neighbours outside the grid
    occupied[:, -1, -1, -1] = True
    return torch.nonzero(occupied).to(torch.int32)


def random_sparse(channels: int, *, batch: int = 2, resolution: int = 7, fill: float = 0.3,
                  seed: int = 0) -> SparseTensor:
    coords = random_coords(batch=batch, resolution=resolution, fill=fill, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    feats = torch.randn(coords.shape[0], channels, generator=gen, dtype=torch.float64)
    return SparseTensor(feats, Structure(coords))


@pytest.mark.parametrize("slab_rows", [None, 7])
def test_sparse_conv_equals_dense_conv3d_at_the_voxels(monkeypatch: pytest.MonkeyPatch,
                                                       slab_rows: int | None) -> None:
    cin, cout, resolution = 5, 6, 7
    if slab_rows is not None:  # force the gather to run in many small slabs
        monkeypatch.setattr(sparse, "_GATHER_BUDGET_ELEMENTS", slab_rows * 27 * cin)
    x = random_sparse(cin, resolution=resolution)
    conv = SparseConv3d(cin, cout, 3).double()
    with torch.no_grad():
        conv.conv.bias.normal_()  # type: ignore[union-attr]
        out = conv(x)
    # The checkpoint layout [out, kx, ky, kz, in] is a cross-correlation kernel
    # once the input axis is moved next to the output axis.
    weight = conv.conv.weight.permute(0, 4, 1, 2, 3)
    dense = F.conv3d(x.dense(resolution), weight, conv.conv.bias, padding=1)
    c = x.coords.long()
    expected = dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]
    torch.testing.assert_close(out.feats, expected, rtol=1e-10, atol=1e-10)


def test_neighbour_table_matches_brute_force() -> None:
    coords = random_coords(batch=2, resolution=5, fill=0.4, seed=3)
    table = Structure(coords).neighbours(3)
    index = {tuple(c): i for i, c in enumerate(coords.tolist())}
    offsets = list(itertools.product((-1, 0, 1), repeat=3))
    for row, (b, x, y, z) in enumerate(coords.tolist()):
        for column, (dx, dy, dz) in enumerate(offsets):
            expected = index.get((b, x + dx, y + dy, z + dz), len(coords))
            assert int(table[row, column]) == expected


def test_downsample_averages_the_voxels_of_each_coarse_cell() -> None:
    x = random_sparse(4, batch=2, resolution=8, fill=0.25, seed=5)
    coarse = downsample(x, 2)
    dense = x.dense(8)
    occupancy = (dense.abs().sum(1, keepdim=True) > 0).double()
    sums = F.avg_pool3d(dense, 2) * 8
    counts = F.avg_pool3d(occupancy, 2) * 8
    expected_cells = torch.nonzero(counts[:, 0] > 0).tolist()
    assert sorted(coarse.coords.tolist()) == sorted(expected_cells)
    c = coarse.coords.long()
    mean = (sums / counts.clamp(min=1))[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]
    torch.testing.assert_close(coarse.feats, mean)


def test_upsample_copies_each_coarse_voxel_back_to_its_fine_voxels() -> None:
    x = random_sparse(3, batch=2, resolution=8, fill=0.25, seed=7)
    coarse = downsample(x, 2)
    fine = upsample(coarse.replace(coarse.feats * 10))
    assert fine.structure is x.structure
    lookup = {tuple(c): i for i, c in enumerate(coarse.coords.tolist())}
    for row, (b, px, py, pz) in enumerate(x.coords.tolist()):
        parent = lookup[(b, px // 2, py // 2, pz // 2)]
        torch.testing.assert_close(fine.feats[row], coarse.feats[parent] * 10)


@pytest.mark.parametrize("slab_rows", [None, 5])
def test_convolution_of_upsampled_features_folds_the_copy_in(
        monkeypatch: pytest.MonkeyPatch, slab_rows: int | None) -> None:
    if slab_rows is not None:
        monkeypatch.setattr(sparse, "_GATHER_BUDGET_ELEMENTS", slab_rows * 27 * 4)
    fine = random_sparse(3, batch=2, resolution=8, fill=0.3, seed=13)
    coarse = downsample(fine, 2)
    coarse = coarse.replace(torch.randn(coarse.feats.shape[0], 6, dtype=torch.float64))
    conv = SparseConv3d(6, 4, 3).double()
    with torch.no_grad():
        conv.conv.bias.normal_()  # type: ignore[union-attr]
        folded = conv.forward_upsampled(coarse)
        plain = conv(upsample(coarse))
    assert folded.structure is fine.structure
    torch.testing.assert_close(folded.feats, plain.feats, rtol=1e-10, atol=1e-10)


def test_structure_caches_derived_tables_and_repeats_batches() -> None:
    structure = Structure(random_coords(batch=1, resolution=6, fill=0.3, seed=9))
    assert structure.neighbours(3) is structure.neighbours(3)
    assert structure.downsampled(2) is structure.downsampled(2)
    doubled = structure.repeat(2)
    assert doubled.batch_size == 2
    assert doubled.sequences.lengths == (structure.num_voxels,) * 2
    torch.testing.assert_close(doubled.coords[structure.num_voxels:, 1:], structure.coords[:, 1:])


def test_structure_rejects_unsorted_or_empty_coords() -> None:
    coords = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 1]])
    with pytest.raises(ValueError, match="sorted"):
        Structure(coords)
    with pytest.raises(ValueError, match="at least one voxel"):
        Structure(torch.zeros(0, 4, dtype=torch.int32))
