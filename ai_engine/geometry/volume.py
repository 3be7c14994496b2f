"""Volume decoding: sample an occupancy field on a lattice, densely or near its surface.

A *field* is any callable ``f(points[N, 3]) -> logits[N]``: a learned decoder on the GPU
(torch tensors in, torch tensors out) or an analytic / CPU field (numpy in, numpy out).
The inside of the shape is ``logits > mc_level``.

Grids hold the values at the ``(R+1)^3`` lattice points spanning ``[-bounds, bounds]^3``,
indexed ``grid[i, j, k]`` at ``(x, y, z) = (i, j, k) * 2 * bounds / R - bounds``, which is
what :func:`ai_engine.geometry.marching.marching_cubes` takes. ``device=None`` works in
numpy on the CPU; any torch device (``"cuda"``, ``"cpu"``) works in torch on it, and the
field then gets and returns torch tensors there.

:func:`decode_hierarchical` decodes a coarse lattice densely, then doubles the resolution
level by level. Each new level starts as the trilinear interpolation of the one below (a
value of consistent sign: inside a cell whose corners lie on one side of the level, the
interpolation stays on that side); the field is queried only at the corners of the cells
that the interpolation puts across the iso-level, and then, round after round, wherever
the queried surface runs on into cells with unqueried corners (a thin leg or rod the
coarse samples fell beside is followed with growing strides), until every cell the surface
crosses has all its corners queried. Marching cubes then sees exactly the dense surface.
What stays invisible is a part that is both thinner than the coarse spacing and detached
from everything the coarse level saw: choose ``base_resolution`` for those.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

Field = Callable[[Any], Any]  # points [N, 3] -> logits [N], numpy or torch alike
DEFAULT_CHUNK = 1 << 18
MAX_STRIDE = 16  # cells a refinement round may grow by
GROW_POINTS_MAX = 1 << 22  # larger growths dilate the whole grid instead


@dataclass(frozen=True)
class DecodeStats:
    """What a decode cost: field queries in total and per level (coarsest first), and the
    rounds of queries each level took (one for the dense base)."""

    resolution: int
    levels: tuple[int, ...]
    queries_per_level: tuple[int, ...]
    passes_per_level: tuple[int, ...] = ()

    @property
    def queries(self) -> int:
        return sum(self.queries_per_level)

    @property
    def dense_queries(self) -> int:
        return (self.resolution + 1) ** 3

    @property
    def reduction(self) -> float:
        """Dense queries over queries made (how many times fewer)."""
        return self.dense_queries / max(self.queries, 1)


class _Backend:
    """The handful of array operations that differ between numpy and torch."""

    def __init__(self, device: Any) -> None:
        self.torch: Any = None
        self.device = device
        if device is not None:
            import torch

            self.torch = torch
            self.device = torch.device(device)

    def empty(self, shape: tuple[int, ...]) -> Any:
        if self.torch is None:
            return np.empty(shape, np.float32)
        return self.torch.empty(shape, dtype=self.torch.float32, device=self.device)

    def zeros_bool(self, shape: tuple[int, ...]) -> Any:
        if self.torch is None:
            return np.zeros(shape, bool)
        return self.torch.zeros(shape, dtype=self.torch.bool, device=self.device)

    def arange(self, start: int, stop: int) -> Any:
        if self.torch is None:
            return np.arange(start, stop, dtype=np.int64)
        return self.torch.arange(start, stop, device=self.device)

    def nonzero(self, mask: Any) -> Any:
        """Indices ``[N, 3]`` of the true entries of a 3D mask."""
        if self.torch is None:
            return np.stack(np.nonzero(mask), axis=1)
        return self.torch.nonzero(mask)

    def box_offsets(self, start: int, stop: int) -> Any:
        """All integer offsets ``[K, 3]`` with each coordinate in ``range(start, stop)``."""
        if self.torch is None:
            return np.indices((stop - start,) * 3).reshape(3, -1).T + start
        steps = self.torch.arange(start, stop, device=self.device)
        return self.torch.cartesian_prod(steps, steps, steps)

    def copy(self, x: Any) -> Any:
        return x.copy() if self.torch is None else x.clone()

    def stack(self, parts: list[Any]) -> Any:
        return np.stack(parts, axis=1) if self.torch is None else self.torch.stack(parts, 1)

    def evaluate(self, field: Field, points: Any) -> Any:
        """Field values at ``points`` as float32 on this backend, flattened."""
        values = field(points)
        if self.torch is None:
            return np.asarray(values, np.float32).reshape(-1)
        return values.to(device=self.device, dtype=self.torch.float32).reshape(-1)

    def dilate(self, mask: Any, cells: int) -> Any:
        """Grow a boolean mask by ``cells`` in every direction (a (2c+1)^3 box), one axis
        at a time; in torch by shifted ORs for small growth, else by window sums of a running
        count (linear in the size, whatever the growth)."""
        for axis in range(3):
            n = mask.shape[axis]
            r = min(cells, n - 1)

            def along(part: slice, axis: int = axis) -> tuple[slice, ...]:
                return tuple(part if a == axis else slice(None) for a in range(3))

            if r <= 0:
                continue
            if self.torch is None:  # a running-max filter, linear in the size
                grown = ndimage.maximum_filter1d(mask.view(np.uint8), 2 * r + 1, axis=axis,
                                                 mode="constant").view(bool)
            elif r <= 2:
                grown = self.copy(mask)
                for shift in range(1, r + 1):
                    grown[along(slice(shift, None))] |= mask[along(slice(None, n - shift))]
                    grown[along(slice(None, n - shift))] |= mask[along(slice(shift, None))]
            else:  # count of marks in [i - r, i + r] = count(<= i + r) - count(<= i - r - 1)
                count = self.torch.cumsum(mask, dim=axis, dtype=self.torch.int32)
                high = self.copy(count)
                high[along(slice(None, n - r))] = count[along(slice(r, None))]
                high[along(slice(n - r, None))] = count[along(slice(n - 1, n))]
                low = count * 0
                low[along(slice(r + 1, None))] = count[along(slice(None, n - r - 1))]
                grown = high > low
            mask = grown
        return mask


def _points(backend: _Backend, index: Any, resolution: int, bounds: float) -> Any:
    """Lattice indices ``[N, 3]`` to coordinates in ``[-bounds, bounds]``."""
    step = 2.0 * bounds / resolution
    if backend.torch is None:
        return (index * step - bounds).astype(np.float32)
    # float64 like numpy, so both backends hand the field bit-identical points
    return (index.to(backend.torch.float64) * step - bounds).to(backend.torch.float32)


def _levels(resolution: int, base_resolution: int) -> list[int]:
    levels = [resolution]
    while levels[0] % 2 == 0 and levels[0] // 2 >= base_resolution:
        levels.insert(0, levels[0] // 2)
    return levels


def decode_dense(field: Field, *, resolution: int, bounds: float = 1.01,
                 chunk_size: int = DEFAULT_CHUNK, device: Any = None) -> Any:
    """Evaluate ``field`` at all ``(resolution+1)^3`` lattice points, ``chunk_size`` at a time.

    Returns a float32 grid (numpy for ``device=None``, else a torch tensor on ``device``).
    """
    if resolution < 1 or chunk_size < 1:
        raise ValueError("resolution and chunk_size must be positive")
    backend = _Backend(device)
    side = resolution + 1
    grid = backend.empty((side, side, side))
    flat = grid.reshape(-1)
    for start in range(0, side**3, chunk_size):
        stop = min(start + chunk_size, side**3)
        idx = backend.arange(start, stop)
        ijk = backend.stack([idx // (side * side), (idx // side) % side, idx % side])
        flat[start:stop] = backend.evaluate(field, _points(backend, ijk, resolution, bounds))
    return grid


def _upsample(backend: _Backend, grid: Any) -> Any:
    """Trilinear upsampling by two on the lattice: (r+1)^3 -> (2r+1)^3, nested points kept."""
    side = 2 * (grid.shape[0] - 1) + 1
    out = backend.empty((side, side, side))
    out[::2, ::2, ::2] = grid
    out[1::2, ::2, ::2] = 0.5 * (grid[:-1] + grid[1:])
    out[:, 1::2, ::2] = 0.5 * (out[:, 0:-1:2, ::2] + out[:, 2::2, ::2])
    out[:, :, 1::2] = 0.5 * (out[:, :, 0:-1:2] + out[:, :, 2::2])
    return out


_CORNERS = tuple((c & 1, c >> 1 & 1, c >> 2 & 1) for c in range(8))


def _cell_corners(points: Any) -> list[Any]:
    """The eight corner views (each r^3) of a lattice array ((r+1)^3)."""
    nx, ny, nz = (n - 1 for n in points.shape)
    return [points[dx:dx + nx, dy:dy + ny, dz:dz + nz] for dx, dy, dz in _CORNERS]


def _straddling_cells(grid: Any, level: float) -> Any:
    """Cells (r^3) with corners on both sides of ``level``."""
    corners = _cell_corners(grid > level)
    any_in = all_in = corners[0]
    for corner in corners[1:]:
        any_in = any_in | corner
        all_in = all_in & corner
    return any_in & ~all_in


def _known_cells(known: Any) -> Any:
    """Cells (r^3) whose eight corners are all known."""
    corners = _cell_corners(known)
    every = corners[0]
    for corner in corners[1:]:
        every = every & corner
    return every


def _cell_points(backend: _Backend, cells: Any) -> Any:
    """Lattice points ((r+1)^3) that are corners of the marked cells (r^3)."""
    points = backend.zeros_bool(tuple(n + 1 for n in cells.shape))
    for view in _cell_corners(points):
        view |= cells
    return points


def _grown_cell_points(backend: _Backend, cells: Any, grow: int) -> Any:
    """Lattice points of the marked cells grown by ``grow`` cells. Few cells (the usual
    case once the surface is found) are grown point by point, many through the grid."""
    if grow == 0:
        return _cell_points(backend, cells)
    index = backend.nonzero(cells)
    span = 2 * grow + 2  # points along one axis of a grown cell
    if len(index) * span**3 > GROW_POINTS_MAX:
        return _cell_points(backend, backend.dilate(cells, grow))
    offsets = backend.box_offsets(-grow, grow + 2)
    side = cells.shape[0] + 1
    points = (index[:, None, :] + offsets[None]).reshape(-1, 3).clip(0, side - 1)
    marked = backend.zeros_bool((side,) * 3)
    marked[points[:, 0], points[:, 1], points[:, 2]] = True
    return marked


def _refine_level(backend: _Backend, field: Field, coarse: Any, *, level: float, band: int,
                  bounds: float, chunk_size: int, max_passes: int) -> tuple[Any, int, int]:
    """One level up: the doubled grid, the field queries and the rounds it took."""
    fine = 2 * (coarse.shape[0] - 1)
    # 1. interpolate everywhere; the fine cells the interpolation puts across the level
    #    (grown by the band) are where the surface should be: query their corners
    grid = _upsample(backend, coarse)
    known = backend.zeros_bool((fine + 1,) * 3)
    known[::2, ::2, ::2] = True  # the coarse lattice itself
    wanted = _grown_cell_points(backend, _straddling_cells(grid, level), band) & ~known
    # 2. query, then follow the surface out of the queried region until every fine cell it
    #    crosses has all its corners queried
    queries = passes = 0
    while passes < max_passes:
        index = backend.nonzero(wanted)
        if len(index) == 0:
            break
        passes += 1
        for start in range(0, len(index), chunk_size):
            part = index[start:start + chunk_size]
            values = backend.evaluate(field, _points(backend, part, fine, bounds))
            grid[part[:, 0], part[:, 1], part[:, 2]] = values
        queries += len(index)
        known |= wanted
        # a surface still leaving the queried region is usually a thin part that the coarse
        # level missed: walk along it with growing strides (0, 1, 2, 4, ... 16 cells)
        leaking = _straddling_cells(grid, level) & ~_known_cells(known)
        stride = min((1 << passes) >> 2, MAX_STRIDE)
        wanted = _grown_cell_points(backend, leaking, stride) & ~known
    return grid, queries, passes


def decode_hierarchical(field: Field, *, resolution: int, mc_level: float, bounds: float = 1.01,
                        base_resolution: int = 32, band: int = 0,
                        chunk_size: int = DEFAULT_CHUNK, device: Any = None,
                        max_passes: int = 32) -> tuple[Any, DecodeStats]:
    """Decode the ``(resolution+1)^3`` grid, querying ``field`` only near its surface.

    Levels halve ``resolution`` while it stays even and at least ``base_resolution``
    (with the default 32: 256 -> 32, 64, 128, 256; 384 -> 48, 96, 192, 384); the coarsest
    is decoded densely. Each finer level starts as the trilinear interpolation of the one
    below; the corners of the cells that the interpolation puts across ``mc_level``, grown
    by ``band`` cells, are queried, then, while the surface runs on into cells with
    unqueried corners, those corners too (at most ``max_passes`` rounds). Returns the grid
    (as :func:`decode_dense`) and :class:`DecodeStats`.
    """
    if band < 0 or max_passes < 1:
        raise ValueError("band must be >= 0 and max_passes >= 1")
    backend = _Backend(device)
    levels = _levels(resolution, max(1, base_resolution))
    context = backend.torch.inference_mode() if backend.torch is not None else nullcontext()
    with context:
        grid = decode_dense(field, resolution=levels[0], bounds=bounds, chunk_size=chunk_size,
                            device=device)
        queries, passes = [(levels[0] + 1) ** 3], [1]
        for _fine in levels[1:]:
            grid, count, rounds = _refine_level(backend, field, grid, level=mc_level, band=band,
                                                bounds=bounds, chunk_size=chunk_size,
                                                max_passes=max_passes)
            queries.append(int(count))
            passes.append(rounds)
    return grid, DecodeStats(resolution, tuple(levels), tuple(queries), tuple(passes))


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance (mean of both directed mean nearest distances) of two
    point sets ``[N, 3]``; 0 for identical sets, ``inf`` when exactly one is empty."""
    from scipy.spatial import cKDTree

    if len(a) == 0 or len(b) == 0:
        return 0.0 if len(a) == len(b) else math.inf
    d_ab = cKDTree(b).query(a)[0]
    d_ba = cKDTree(a).query(b)[0]
    return float(0.5 * (d_ab.mean() + d_ba.mean()))
