"""Dense and hierarchical volume decoding over analytic fields, numpy and torch alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from ai_engine.geometry.marching import marching_cubes
from ai_engine.geometry.volume import chamfer_distance, decode_dense, decode_hierarchical

BOUNDS = 1.01
Sdf = Callable[[np.ndarray], np.ndarray]


def sphere(p: np.ndarray) -> np.ndarray:
    return np.linalg.norm(p - [0.05, -0.02, 0.03], axis=1) - 0.5


def torus(p: np.ndarray) -> np.ndarray:
    ring = np.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - 0.55
    return np.sqrt(ring**2 + p[:, 1] ** 2) - 0.18


def thin_plate(p: np.ndarray) -> np.ndarray:
    """A tilted 0.09-thick plate (about six voxels at 128, under two at the 32 base)."""
    c, s = np.cos(0.4), np.sin(0.4)
    q = np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1], p[:, 2]], axis=1)
    d = np.abs(q) - [0.7, 0.045, 0.6]
    outside = np.linalg.norm(np.maximum(d, 0.0), axis=1)
    return outside + np.minimum(d.max(axis=1), 0.0)


def two_blobs(p: np.ndarray) -> np.ndarray:
    a = np.linalg.norm(p - [-0.5, 0.2, 0.0], axis=1) - 0.3
    b = np.linalg.norm(p - [0.55, -0.4, 0.3], axis=1) - 0.15
    return np.minimum(a, b)


def logits(sdf: Sdf) -> Callable[[np.ndarray], np.ndarray]:
    """Occupancy logits as a learned decoder gives them: positive inside, a smooth ramp."""
    return lambda p: np.tanh(-8.0 * sdf(p))


SHAPES = {"sphere": sphere, "torus": torus, "thin_plate": thin_plate, "two_blobs": two_blobs}


def test_dense_grid_is_the_field_on_the_lattice_in_xyz_order() -> None:
    def linear(p: np.ndarray) -> np.ndarray:
        return p[:, 0] + 10.0 * p[:, 1] + 100.0 * p[:, 2]

    grid = decode_dense(linear, resolution=8, bounds=1.0, chunk_size=37)
    assert grid.shape == (9, 9, 9) and grid.dtype == np.float32
    step = 2.0 / 8
    for i, j, k in [(0, 0, 0), (8, 0, 0), (0, 8, 0), (0, 0, 8), (3, 5, 7)]:
        want = (i * step - 1) + 10 * (j * step - 1) + 100 * (k * step - 1)
        assert grid[i, j, k] == pytest.approx(want, abs=1e-4)


def test_dense_torch_matches_numpy() -> None:
    field = logits(torus)
    grid = decode_dense(field, resolution=24)
    as_torch = decode_dense(lambda p: torch.from_numpy(field(p.numpy())), resolution=24,
                            device="cpu", chunk_size=1000)
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_allclose(as_torch.numpy(), grid, atol=1e-6)


@pytest.mark.parametrize("name", list(SHAPES))
def test_hierarchical_gives_the_dense_surface_for_far_fewer_queries(name: str) -> None:
    field, resolution = logits(SHAPES[name]), 128
    dense = marching_cubes(decode_dense(field, resolution=resolution), level=0.0, bounds=BOUNDS)
    grid, stats = decode_hierarchical(field, resolution=resolution, mc_level=0.0,
                                      base_resolution=32)
    fast = marching_cubes(grid, level=0.0, bounds=BOUNDS)
    voxel = 2 * BOUNDS / resolution
    assert not dense.is_empty
    assert chamfer_distance(dense.vertices, fast.vertices) < 0.01 * voxel
    assert len(fast.faces) == len(dense.faces)
    assert stats.levels == (32, 64, 128)
    assert stats.dense_queries == 129**3
    print(f"{name}: {stats.queries} queries, {stats.reduction:.1f}x fewer than dense")
    assert stats.reduction > 8.0


def rod_on_a_ball(p: np.ndarray) -> np.ndarray:
    """A ball with a 0.03-thick rod to x = 0.95: thinner than the 32-lattice's spacing."""
    ball = np.linalg.norm(p - [-0.3, 0.0, 0.0], axis=1) - 0.35
    q = p - [0.0, 0.013, 0.021]
    radial = np.sqrt(q[:, 1] ** 2 + q[:, 2] ** 2) - 0.015
    along = np.abs(q[:, 0] - 0.45) - 0.5
    rod = (np.sqrt(np.maximum(radial, 0.0) ** 2 + np.maximum(along, 0.0) ** 2)
           + np.minimum(np.maximum(radial, along), 0.0))
    return np.minimum(ball, rod)


def test_hierarchical_follows_a_thin_part_the_coarse_level_missed() -> None:
    field = logits(rod_on_a_ball)
    dense = marching_cubes(decode_dense(field, resolution=128), level=0.0, bounds=BOUNDS)
    assert dense.vertices[:, 0].max() > 0.94
    one_round, _ = decode_hierarchical(field, resolution=128, mc_level=0.0, base_resolution=32,
                                       max_passes=1)
    cut = marching_cubes(one_round, level=0.0, bounds=BOUNDS)
    assert cut.vertices[:, 0].max() < 0.3  # the coarse levels never saw the rod
    grid, stats = decode_hierarchical(field, resolution=128, mc_level=0.0, base_resolution=32)
    fast = marching_cubes(grid, level=0.0, bounds=BOUNDS)
    assert stats.passes_per_level[-1] > 2
    assert len(fast.faces) == len(dense.faces)
    assert chamfer_distance(dense.vertices, fast.vertices) < 0.01 * 2 * BOUNDS / 128
    assert stats.reduction > 15


def test_hierarchical_keeps_both_blobs() -> None:
    grid, _ = decode_hierarchical(logits(two_blobs), resolution=64, mc_level=0.0,
                                  base_resolution=16)
    mesh = marching_cubes(grid, level=0.0, bounds=BOUNDS)
    x = mesh.vertices[:, 0]
    assert (x < 0).any() and (x > 0.35).any()


def test_hierarchical_torch_matches_numpy_and_counts_the_same() -> None:
    field = logits(thin_plate)
    grid, stats = decode_hierarchical(field, resolution=64, mc_level=0.0, base_resolution=16)
    calls: list[Any] = []

    def torch_field(p: torch.Tensor) -> torch.Tensor:
        calls.append(p)
        return torch.from_numpy(field(p.numpy()))

    tgrid, tstats = decode_hierarchical(torch_field, resolution=64, mc_level=0.0,
                                        base_resolution=16, device="cpu", chunk_size=5000)
    assert all(isinstance(c, torch.Tensor) and len(c) <= 5000 for c in calls)
    assert sum(len(c) for c in calls) == tstats.queries == stats.queries
    np.testing.assert_allclose(tgrid.numpy(), grid, atol=1e-5)


def test_hierarchical_honours_a_nonzero_level() -> None:
    level = -1 / 512  # Hunyuan3D's iso-level on its logits
    field = logits(sphere)
    dense = marching_cubes(decode_dense(field, resolution=64), level=level, bounds=BOUNDS)
    grid, _ = decode_hierarchical(field, resolution=64, mc_level=level, base_resolution=16)
    fast = marching_cubes(grid, level=level, bounds=BOUNDS)
    assert chamfer_distance(dense.vertices, fast.vertices) < 1e-4


def test_unrefined_points_keep_the_sign_of_the_field() -> None:
    field = logits(torus)
    grid, stats = decode_hierarchical(field, resolution=64, mc_level=0.0, base_resolution=16)
    truth = decode_dense(field, resolution=64)
    assert stats.queries < truth.size / 4
    np.testing.assert_array_equal(grid > 0.0, truth > 0.0)


def test_band_widens_the_refined_shell() -> None:
    field = logits(sphere)
    _, thin = decode_hierarchical(field, resolution=64, mc_level=0.0, base_resolution=16)
    _, wide = decode_hierarchical(field, resolution=64, mc_level=0.0, base_resolution=16,
                                  band=1)
    assert wide.queries > thin.queries


def test_resolution_that_does_not_halve_decodes_densely() -> None:
    field = logits(sphere)
    grid, stats = decode_hierarchical(field, resolution=45, mc_level=0.0, base_resolution=16)
    assert stats.levels == (45,) and stats.reduction == 1.0
    np.testing.assert_array_equal(grid, decode_dense(field, resolution=45))


def test_field_without_surface_gives_an_empty_mesh() -> None:
    grid, stats = decode_hierarchical(lambda p: -np.ones(len(p)), resolution=32, mc_level=0.0,
                                      base_resolution=8)
    assert stats.queries == 9**3
    assert marching_cubes(grid, level=0.0).is_empty
