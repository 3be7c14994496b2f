"""Marching cubes on the CPU (scikit-image) and in torch: the same surface, closed, outward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy import ndimage
from scipy.spatial import cKDTree

from ai_engine.geometry.marching import _EDGES, case_table, marching_cubes, marching_cubes_torch
from ai_engine.geometry.types import Mesh
from ai_engine.geometry.volume import chamfer_distance, decode_dense


def torus_logits(p: np.ndarray) -> np.ndarray:
    ring = np.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - 0.5
    return 5.0 * (0.2 - np.sqrt(ring**2 + p[:, 1] ** 2))


def noise_grid(seed: int, side: int = 36) -> np.ndarray:
    """A smooth random field with many small blobs and saddles, outside at the border."""
    rng = np.random.default_rng(seed)
    grid = ndimage.gaussian_filter(rng.normal(size=(side,) * 3), 1.3).astype(np.float32)
    grid[[0, -1]] = grid[:, [0, -1]] = grid[:, :, [0, -1]] = -1.0
    return grid


def as_trimesh(mesh: Mesh) -> trimesh.Trimesh:
    return trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)


def test_case_table_uses_exactly_the_crossed_edges() -> None:
    counts, table = case_table()
    assert counts[0] == counts[255] == 0
    assert counts.max() == 5
    for case in range(256):
        inside = [case >> c & 1 for c in range(8)]
        crossed = {e for e, (a, b) in enumerate(_EDGES) if inside[a] != inside[b]}
        used = set(table[case, : counts[case]].ravel().tolist())
        assert used == crossed, case
        # the complement has the same crossings and as many triangles or one fewer/more
        assert abs(int(counts[case]) - int(counts[255 - case])) <= 2


@pytest.mark.parametrize("resolution", [32, 65])
def test_torch_and_cpu_give_the_same_vertices_on_a_smooth_shape(resolution: int) -> None:
    grid = decode_dense(torus_logits, resolution=resolution, bounds=1.0)
    cpu = marching_cubes(grid, level=0.0)
    gpu_path = marching_cubes(torch.from_numpy(grid), level=0.0)
    assert len(gpu_path.vertices) == len(cpu.vertices)
    assert len(gpu_path.faces) == len(cpu.faces)
    distance, _ = cKDTree(cpu.vertices).query(gpu_path.vertices)
    assert distance.max() < 1e-5
    assert chamfer_distance(cpu.vertices, gpu_path.vertices) < 1e-6


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_closed_shape_is_watertight_and_wound_outward(backend: str) -> None:
    grid = decode_dense(torus_logits, resolution=48, bounds=1.0)
    mesh = marching_cubes(torch.from_numpy(grid) if backend == "torch" else grid, level=0.0)
    tm = as_trimesh(mesh)
    assert tm.is_watertight and tm.is_winding_consistent
    exact = 2 * np.pi**2 * 0.5 * 0.2**2
    assert tm.volume == pytest.approx(exact, rel=0.02)  # positive: faces wind outward
    assert mesh.vertices.min() >= -1.0 and mesh.vertices.max() <= 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_agrees_with_lewiner_on_a_noisy_field(seed: int) -> None:
    grid = noise_grid(seed)
    cpu = marching_cubes(grid, level=0.0)
    ours = marching_cubes_torch(torch.from_numpy(grid), level=0.0)
    tm = as_trimesh(ours)
    assert tm.is_watertight and tm.is_winding_consistent and tm.volume > 0
    # every torch vertex is a Lewiner vertex; Lewiner may add a few inside ambiguous cells
    distance, _ = cKDTree(cpu.vertices).query(ours.vertices)
    assert distance.max() < 1e-5
    extra = len(cpu.vertices) - len(ours.vertices)
    assert 0 <= extra <= 0.002 * len(cpu.vertices)
    assert as_trimesh(cpu).volume == pytest.approx(tm.volume, rel=0.01)


def test_torch_path_keeps_the_level_and_bounds_conventions() -> None:
    grid = decode_dense(lambda p: 0.3 - np.linalg.norm(p, axis=1), resolution=40, bounds=2.0)
    mesh = marching_cubes(torch.from_numpy(grid), level=-0.1, bounds=2.0)
    radius = np.linalg.norm(mesh.vertices, axis=1)
    np.testing.assert_allclose(radius, 0.4, atol=0.01)  # 0.3 - r = -0.1
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int64


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_no_surface_is_an_empty_mesh(backend: str) -> None:
    grid = np.full((9, 9, 9), -1.0, np.float32)
    mesh = marching_cubes(torch.from_numpy(grid) if backend == "torch" else grid, level=0.0)
    assert mesh.is_empty


def test_torch_path_takes_half_precision_and_any_device_tensor() -> None:
    grid = decode_dense(torus_logits, resolution=32, bounds=1.0)
    half = marching_cubes(torch.from_numpy(grid).half(), level=0.0)
    full = marching_cubes(torch.from_numpy(grid), level=0.0)
    assert chamfer_distance(half.vertices, full.vertices) < 2e-3
