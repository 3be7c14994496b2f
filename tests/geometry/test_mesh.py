"""Mesh cleanup: components, degenerate/duplicate faces, winding, smoothing, decimation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import trimesh

from ai_engine.geometry.mesh import clean_mesh, orient_faces, taubin_smooth, vertex_normals
from ai_engine.geometry.types import Mesh


def _sphere(subdivisions: int = 3, *, center: tuple[float, float, float] = (0, 0, 0),
            radius: float = 1.0) -> Mesh:
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    vertices = sphere.vertices * radius + np.asarray(center)
    # Red on the +X side, blue on the -X side.
    colors = np.where(sphere.vertices[:, :1] > 0, [[230, 20, 20, 255]], [[20, 20, 230, 255]])
    return Mesh(vertices.astype(np.float32), sphere.faces, colors.astype(np.uint8))


def _concat(*meshes: Mesh) -> Mesh:
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    return Mesh(np.concatenate([m.vertices for m in meshes]),
                np.concatenate([m.faces + o for m, o in zip(meshes, offsets, strict=True)]),
                np.concatenate([m.colors for m in meshes]))


def _trimesh(mesh: Mesh) -> trimesh.Trimesh:
    return trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)


def test_small_floating_components_are_dropped() -> None:
    big, crumb = _sphere(3), _sphere(0, center=(3, 0, 0), radius=0.1)
    cleaned = clean_mesh(_concat(big, crumb), min_component_ratio=0.05)
    assert len(cleaned.faces) == len(big.faces)
    assert cleaned.vertices[:, 0].max() < 1.01
    kept = clean_mesh(_concat(big, crumb), min_component_ratio=0.0)
    assert len(kept.faces) == len(big.faces) + len(crumb.faces)


def test_degenerate_duplicate_and_unreferenced_are_dropped() -> None:
    sphere = _sphere(2)
    faces = np.concatenate([sphere.faces,
                            sphere.faces[:5],                 # duplicates
                            sphere.faces[5:8, [1, 2, 0]],     # same triangle, rotated
                            [[0, 0, 1], [2, 3, 3]]])          # degenerate
    vertices = np.concatenate([sphere.vertices, np.full((4, 3), 9.0, np.float32)])
    colors = np.concatenate([sphere.colors, np.zeros((4, 4), np.uint8)])
    cleaned = clean_mesh(Mesh(vertices, faces, colors))
    assert len(cleaned.faces) == len(sphere.faces)
    assert len(cleaned.vertices) == len(sphere.vertices)
    assert _trimesh(cleaned).is_watertight


def test_split_vertices_are_merged_into_a_closed_mesh() -> None:
    sphere = _sphere(2)
    corners = sphere.vertices[sphere.faces].reshape(-1, 3)  # every face owns its corners
    assert sphere.colors is not None
    soup = Mesh(corners, np.arange(len(corners)).reshape(-1, 3),
                sphere.colors[sphere.faces].reshape(-1, 4))
    cleaned = clean_mesh(soup)
    assert len(cleaned.vertices) == len(sphere.vertices)
    assert _trimesh(cleaned).is_watertight
    assert _trimesh(cleaned).volume > 0


def test_winding_is_made_consistent_and_outward() -> None:
    sphere = _sphere(3)
    rng = np.random.default_rng(0)
    faces = sphere.faces.copy()
    flip = rng.random(len(faces)) < 0.3
    faces[flip] = faces[flip][:, ::-1]
    assert not _trimesh(Mesh(sphere.vertices, faces)).is_winding_consistent
    fixed = Mesh(sphere.vertices, orient_faces(sphere.vertices, faces))
    assert _trimesh(fixed).is_winding_consistent and _trimesh(fixed).volume > 0
    inverted = sphere.faces[:, ::-1]
    assert _trimesh(Mesh(sphere.vertices, inverted)).volume < 0
    outward = Mesh(sphere.vertices, orient_faces(sphere.vertices, inverted))
    assert _trimesh(outward).is_winding_consistent and _trimesh(outward).volume > 0


def test_two_parts_each_face_outward() -> None:
    one, two = _sphere(2), _sphere(2, center=(4, 0, 0))
    two = Mesh(two.vertices, two.faces[:, ::-1], two.colors)  # the second is inside out
    cleaned = clean_mesh(_concat(one, two))
    parts = _trimesh(cleaned).split(only_watertight=True)
    assert len(parts) == 2 and all(part.volume > 0 for part in parts)


def test_taubin_smooths_without_shrinking() -> None:
    sphere = _sphere(4)
    rng = np.random.default_rng(1)
    noisy = sphere.vertices * (1 + 0.03 * rng.standard_normal((len(sphere.vertices), 1)))
    smoothed = taubin_smooth(noisy.astype(np.float32), sphere.faces, iterations=10)
    radius_before = np.linalg.norm(noisy, axis=1)
    radius_after = np.linalg.norm(smoothed, axis=1)
    assert radius_after.std() < 0.4 * radius_before.std()
    assert radius_after.mean() == pytest.approx(1.0, abs=0.02)


def test_decimation_meets_the_budget_and_keeps_colours() -> None:
    sphere = _sphere(5)  # 20480 faces
    cleaned = clean_mesh(sphere, face_count=2000)
    assert 1800 <= len(cleaned.faces) <= 2000
    colors = cleaned.colors
    assert colors is not None and len(colors) == len(cleaned.vertices)
    tri = _trimesh(cleaned)
    assert tri.is_watertight and tri.volume > 0
    x = cleaned.vertices[:, 0]
    red, blue = colors[x > 0.2], colors[x < -0.2]
    assert (red[:, 0] > 200).mean() > 0.98 and (blue[:, 2] > 200).mean() > 0.98


def test_decimation_is_safe_from_several_threads() -> None:
    meshes = [_sphere(5, radius=1.0 + i) for i in range(4)]
    expected = [clean_mesh(m, face_count=3000) for m in meshes]
    results: list[Mesh | None] = [None] * len(meshes)

    def work(index: int) -> None:
        results[index] = clean_mesh(meshes[index], face_count=3000)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(meshes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, expected, strict=True):
        assert got is not None
        assert np.array_equal(got.faces, want.faces)
        assert np.allclose(got.vertices, want.vertices)


def test_no_colours_and_empty_inputs() -> None:
    sphere = _sphere(3)
    plain = clean_mesh(Mesh(sphere.vertices, sphere.faces), face_count=500, smooth=True)
    assert plain.colors is None and 400 <= len(plain.faces) <= 500
    empty = clean_mesh(Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)))
    assert empty.is_empty


def test_non_finite_vertices_are_dropped() -> None:
    sphere = _sphere(2)
    vertices = np.concatenate([sphere.vertices, [[np.nan, 0, 0]]]).astype(np.float32)
    faces = np.concatenate([sphere.faces, [[0, 1, len(sphere.vertices)]]])
    cleaned = clean_mesh(Mesh(vertices, faces))
    assert np.isfinite(cleaned.vertices).all() and len(cleaned.faces) == len(sphere.faces)


def test_vertex_normals_point_outward_and_are_unit() -> None:
    sphere = _sphere(3)
    normals = vertex_normals(sphere.vertices, sphere.faces)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert np.allclose(normals, sphere.vertices / np.linalg.norm(sphere.vertices, axis=1,
                                                                   keepdims=True), atol=0.05)
