"""Mesh cleanup and the face budget, vectorised with numpy and scipy.

:func:`clean_mesh` runs, in order:

1. drop faces touching non-finite vertices; merge vertices at identical positions;
2. drop degenerate faces (a repeated vertex) and duplicate faces;
3. drop floating components much smaller than the largest;
4. wind every face consistently with its neighbours, then outward;
5. optionally Taubin-smooth (smooths without the shrinking of plain Laplacian);
6. decimate to the face budget with fast-simplification (quadric error
   metric), carrying vertex colours through the collapse history;
7. drop unreferenced vertices.

Every step keeps per-vertex colours in step with the vertices. Nothing touches
the file system.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from ai_engine.geometry.types import ByteArray, FloatArray, IntArray, Mesh

# fast-simplification keeps the mesh it works on in module-global C++ state
# (load, simplify and read back are separate calls), so two threads decimating
# at once would corrupt each other's mesh.
_SIMPLIFY_LOCK = threading.Lock()

TAUBIN_LAMBDA = 0.5
TAUBIN_MU = -0.53


def clean_mesh(mesh: Mesh, *, min_component_ratio: float = 0.02, face_count: int | None = None,
               smooth: bool = False, smooth_iterations: int = 8) -> Mesh:
    """A cleaned copy of ``mesh`` (see the module docstring for the steps).

    ``min_component_ratio``: components with fewer faces than this fraction of the
    largest one are dropped (0 keeps all). ``face_count``: decimate to at most this
    many faces (None keeps them all). ``smooth``: run ``smooth_iterations`` Taubin
    passes. An empty input gives an empty mesh.
    """
    vertices = np.asarray(mesh.vertices, np.float32)
    faces = np.asarray(mesh.faces, np.int64)
    colors = None if mesh.colors is None else np.asarray(mesh.colors, np.uint8)
    if len(faces) == 0 or len(vertices) == 0:
        return _empty(colors is not None)

    # 1. Non-finite positions, then coincident vertices (marching cubes emits
    # them where the field equals the level exactly at a lattice point).
    finite = np.asarray(np.isfinite(vertices).all(axis=1))
    if not finite.all():
        faces = faces[finite[faces].all(axis=1)]
    vertices, faces, colors = _merge_coincident(vertices, faces, colors)

    # 2. Degenerate and duplicate faces.
    faces = _drop_bad_faces(faces)

    # 3. Small floating components.
    labels = _vertex_components(faces, len(vertices))
    face_labels = labels[faces[:, 0]] if len(faces) else labels[:0]
    if min_component_ratio > 0.0 and len(faces):
        sizes = np.bincount(face_labels)
        keep = sizes[face_labels] >= min_component_ratio * sizes.max()
        faces, face_labels = faces[keep], face_labels[keep]
    vertices, faces, colors = _compact(vertices, faces, colors)
    if len(faces) == 0:
        return _empty(colors is not None)

    # 4. Consistent, outward winding.
    faces = orient_faces(vertices, faces, parts=face_labels)

    # 5. Smoothing.
    if smooth and smooth_iterations > 0:
        vertices = taubin_smooth(vertices, faces, iterations=smooth_iterations)

    # 6. Face budget.
    if face_count is not None and len(faces) > face_count:
        vertices, faces, colors = _decimate(vertices, faces, colors, face_count=face_count)
        faces = _drop_bad_faces(faces)
        vertices, faces, colors = _compact(vertices, faces, colors)
    return Mesh(vertices, faces, colors)


def vertex_normals(vertices: FloatArray, faces: IntArray) -> FloatArray:
    """Unit area-weighted vertex normals ``[V, 3]`` (``+Y`` where a vertex has no area)."""
    corners = vertices[faces].astype(np.float64)
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.empty((len(vertices), 3), np.float64)
    flat = faces.ravel()
    for axis in range(3):
        normals[:, axis] = np.bincount(flat, weights=np.repeat(face_normals[:, axis], 3),
                                       minlength=len(vertices))
    length = np.linalg.norm(normals, axis=1)
    missing = length <= 1e-20
    normals[missing] = (0.0, 1.0, 0.0)
    length[missing] = 1.0
    return (normals / length[:, None]).astype(np.float32)


def orient_faces(vertices: FloatArray, faces: IntArray, *,
                 parts: npt.NDArray[np.integer] | None = None) -> IntArray:
    """``faces`` re-wound so neighbours agree and every closed part faces outward.

    ``parts``: a connected-component label per face, when the caller has them.

    Neighbours across a manifold edge agree when they traverse it in opposite
    directions. Choosing which faces to flip is a two-colouring, solved without a
    Python traversal as connected components of the orientation double cover:
    nodes ``(face, flipped?)``, joined where the two choices agree. A part that
    cannot be oriented (a Moebius strip) is left as it is. Each part is then
    flipped as a whole if its signed volume is negative.
    """
    if len(faces) == 0:
        return faces
    edges = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    base = int(faces.max()) + 1
    # Fast path (the usual case): no directed edge repeats, so every two faces
    # sharing an edge already traverse it in opposite directions.
    directed = np.sort(edges[:, 0] * base + edges[:, 1])
    if not (directed[1:] == directed[:-1]).any():
        if parts is None:
            parts = _vertex_components(faces, base)[faces[:, 0]]
        return _outward(vertices, faces, np.asarray(parts))
    return _outward(vertices, *_consistent(faces, edges, base))


def _consistent(faces: IntArray, edges: IntArray, base: int
                ) -> tuple[IntArray, npt.NDArray[np.integer]]:
    """Faces flipped to agree across manifold edges, and a part label per face."""
    face_total = len(faces)
    forward = edges[:, 0] < edges[:, 1]
    low = np.where(forward, edges[:, 0], edges[:, 1])
    high = np.where(forward, edges[:, 1], edges[:, 0])
    key = low * base + high
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    run = np.diff(np.r_[starts, len(sorted_key)])
    pair_starts = starts[run == 2]  # manifold edges only
    first, second = order[pair_starts], order[pair_starts + 1]
    face_a, face_b = first // 3, second // 3
    same = np.where(forward[first] != forward[second], 0, 1)
    rows = np.r_[2 * face_a, 2 * face_a + 1]
    cols = np.r_[2 * face_b + same, 2 * face_b + 1 - same]
    graph = sparse.coo_matrix((np.ones(len(rows), np.int8), (rows, cols)),
                              shape=(2 * face_total, 2 * face_total))
    _, labels = csgraph.connected_components(graph, directed=False)
    keep_label, flip_label = labels[0::2], labels[1::2]
    # Orientable parts split in two sheets; keep every face on the lower-labelled one.
    flip = keep_label > flip_label
    oriented = faces.copy()
    oriented[flip] = oriented[flip][:, ::-1]
    return oriented, np.minimum(keep_label, flip_label)


def _outward(vertices: FloatArray, faces: IntArray, part: npt.NDArray[np.integer]) -> IntArray:
    """Flip every part whose signed volume is negative."""
    # Outward: the signed volume of a closed part is positive when its faces
    # point outward (taken about the mesh's centre so open parts behave too).
    centred = vertices.astype(np.float64) - (vertices.min(axis=0) + vertices.max(axis=0)) * 0.5
    a, b, c = centred[faces[:, 0]], centred[faces[:, 1]], centred[faces[:, 2]]
    volume = (a[:, 0] * (b[:, 1] * c[:, 2] - b[:, 2] * c[:, 1])
              + a[:, 1] * (b[:, 2] * c[:, 0] - b[:, 0] * c[:, 2])
              + a[:, 2] * (b[:, 0] * c[:, 1] - b[:, 1] * c[:, 0]))
    part_volume = np.bincount(part, weights=volume)
    inward = part_volume[part] < 0.0
    if not inward.any():
        return faces
    oriented = faces.copy()
    oriented[inward] = oriented[inward][:, ::-1]
    return oriented


def taubin_smooth(vertices: FloatArray, faces: IntArray, *, iterations: int = 8,
                  lam: float = TAUBIN_LAMBDA, mu: float = TAUBIN_MU) -> FloatArray:
    """Taubin lambda|mu smoothing with uniform (umbrella) weights; returns new vertices."""
    vertex_total = len(vertices)
    edges = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    rows = np.r_[edges[:, 0], edges[:, 1]]
    cols = np.r_[edges[:, 1], edges[:, 0]]
    adjacency = sparse.csr_matrix((np.ones(len(rows), np.float64), (rows, cols)),
                                  shape=(vertex_total, vertex_total))
    adjacency.data[:] = 1.0  # an edge shared by two faces was summed twice
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    degree[degree == 0] = 1.0
    average = sparse.diags(1.0 / degree) @ adjacency
    points = vertices.astype(np.float64)
    for _ in range(iterations):
        points += lam * (average @ points - points)
        points += mu * (average @ points - points)
    return points.astype(np.float32)


def _decimate(vertices: FloatArray, faces: IntArray, colors: ByteArray | None, *,
              face_count: int) -> tuple[FloatArray, IntArray, ByteArray | None]:
    """Quadric-error decimation to ``face_count`` faces, colours following the collapses."""
    import fast_simplification  # imported here: the C extension is only needed to decimate

    with _SIMPLIFY_LOCK:
        points, new_faces, collapses = fast_simplification.simplify(
            vertices.astype(np.float64), faces.astype(np.int64), target_count=int(face_count),
            agg=7.0, return_collapses=True)
    new_vertices = np.asarray(points, np.float32)
    new_faces = np.asarray(new_faces, np.int64).reshape(-1, 3)
    if colors is None:
        return new_vertices, new_faces, None
    return new_vertices, new_faces, _collapsed_colors(
        colors, np.asarray(collapses, np.int64).reshape(-1, 2), vertices, new_vertices)


def _collapsed_colors(colors: ByteArray, collapses: IntArray, vertices: FloatArray,
                      new_vertices: FloatArray) -> ByteArray:
    """Each kept vertex's colour: the mean over the original vertices collapsed into it.

    ``collapses[i] = (keep, gone)`` in original indices; fast-simplification
    compacts the survivors in their original order. Should the survivor count
    not match (a vertex lost all its faces), fall back to the nearest original
    vertex's colour.
    """
    vertex_total = len(colors)
    parent = np.arange(vertex_total)
    parent[collapses[:, 1]] = collapses[:, 0]
    while True:  # pointer jumping: log(chain length) passes
        grand = parent[parent]
        if np.array_equal(grand, parent):
            break
        parent = grand
    survivors = np.flatnonzero(parent == np.arange(vertex_total))
    if len(survivors) != len(new_vertices):
        _, nearest = cKDTree(vertices).query(new_vertices)
        return colors[nearest]
    counts = np.bincount(parent, minlength=vertex_total)[survivors].astype(np.float64)
    mean = np.empty((len(survivors), colors.shape[1]), np.float64)
    for channel in range(colors.shape[1]):
        mean[:, channel] = np.bincount(parent, weights=colors[:, channel].astype(np.float64),
                                       minlength=vertex_total)[survivors] / counts
    return np.clip(np.rint(mean), 0, 255).astype(np.uint8)


def _merge_coincident(vertices: FloatArray, faces: IntArray, colors: ByteArray | None
                      ) -> tuple[FloatArray, IntArray, ByteArray | None]:
    """Merge vertices at bit-identical positions, keeping the first one's colour and order."""
    rows = np.ascontiguousarray(vertices + np.float32(0.0))  # -0.0 and 0.0 compare equal
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * 3))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    if len(first) == len(vertices):
        return vertices, faces, colors
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    kept = first[order]
    new_colors = None if colors is None else colors[kept]
    return vertices[kept], rank[inverse.ravel()][faces], new_colors


def _drop_bad_faces(faces: IntArray) -> IntArray:
    """``faces`` without repeated-vertex faces and without repeats of a vertex set."""
    if len(faces) == 0:
        return faces
    good = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) \
        & (faces[:, 0] != faces[:, 2])
    faces = faces[good]
    ordered = np.sort(faces, axis=1)
    base = int(faces.max()) + 1 if len(faces) else 1
    if base < 2_000_000:  # base^3 fits in int64
        key = (ordered[:, 0] * base + ordered[:, 1]) * base + ordered[:, 2]
        _, first = np.unique(key, return_index=True)
    else:
        _, first = np.unique(ordered, axis=0, return_index=True)
    if len(first) == len(faces):
        return faces
    return faces[np.sort(first)]


def _vertex_components(faces: IntArray, vertex_total: int) -> npt.NDArray[np.int32]:
    """Connected-component label of every vertex (vertices linked by shared faces)."""
    rows = np.r_[faces[:, 0], faces[:, 1]]
    cols = np.r_[faces[:, 1], faces[:, 2]]
    graph = sparse.coo_matrix((np.ones(len(rows), np.int8), (rows, cols)),
                              shape=(vertex_total, vertex_total))
    _, labels = csgraph.connected_components(graph, directed=False)
    return labels


def _compact(vertices: FloatArray, faces: IntArray, colors: ByteArray | None
             ) -> tuple[FloatArray, IntArray, ByteArray | None]:
    """Drop vertices no face references, renumbering the faces."""
    used = np.zeros(len(vertices), bool)
    used[faces.ravel()] = True
    if used.all():
        return vertices, faces, colors
    remap = np.cumsum(used) - 1
    return (vertices[used], remap[faces], None if colors is None else colors[used])


def _empty(with_colors: bool) -> Mesh:
    return Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64),
                np.zeros((0, 4), np.uint8) if with_colors else None)


__all__ = ["clean_mesh", "orient_faces", "taubin_smooth", "vertex_normals"]
