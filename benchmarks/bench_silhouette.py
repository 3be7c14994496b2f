"""Time each step of the silhouette path on a 1024² photo cut-out (CPU).

    .venv/bin/python benchmarks/bench_silhouette.py [--repeat N]

Prints the median milliseconds of: frame, volume (signed distance + field),
marching cubes, colours, cleanup (+ decimation), the whole generator call,
each exporter, the thumbnail; then cleanup of a 100k-face mesh and the
thumbnail of a 50k-face mesh against their targets.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import skimage
import trimesh
from PIL import Image
from scipy import ndimage

from ai_engine.generators import silhouette as sil
from ai_engine.geometry.export import MESH_FORMATS, export_mesh
from ai_engine.geometry.marching import marching_cubes
from ai_engine.geometry.mesh import clean_mesh
from ai_engine.geometry.thumbnail import render_thumbnail
from ai_engine.geometry.types import Gaussians, Mesh


def photo_cutout(size_px: int = 1024) -> np.ndarray:
    """scikit-image's logo photo, cut out from its white surround, at ``size_px``²."""
    path = os.path.join(os.path.dirname(skimage.__file__), "data", "logo.png")
    image = Image.open(path).convert("RGBA").resize((size_px, size_px), Image.Resampling.LANCZOS)
    rgba = np.asarray(image).copy()
    mask = ndimage.binary_fill_holes(
        ndimage.binary_closing(rgba[:, :, :3].min(axis=2) < 235, iterations=16))
    rgba[:, :, 3] = np.where(mask, 255, 0)
    return rgba


Row = tuple[str, float, float]


def timed(label: str, fn: Callable[[], Any], repeat: int, rows: list[Row]) -> Any:
    """Run ``fn`` once to warm up, then ``repeat`` times; record median wall and CPU ms.

    CPU time (this process, all threads) is reported beside wall time because a
    shared machine's load inflates wall time; for single-threaded steps it is
    close to the wall time on an idle machine.
    """
    fn()  # warm-up (imports, caches)
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    rows.append((label, statistics.median(walls) * 1000.0, statistics.median(cpus) * 1000.0))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    repeat = args.repeat
    print(f"machine: {platform.machine()} {platform.processor() or ''}, "
          f"{os.cpu_count()} CPUs, numpy {np.__version__}")

    cutout = photo_cutout()
    generator = sil.SilhouetteGenerator()
    params = sil.SilhouetteParams()
    cells = params.resolution + params.resolution % 2
    rows: list[Row] = []

    framed = timed("frame (1024² -> 512²)", lambda: generator.frame(cutout), repeat, rows)
    distance = timed("volume: signed distance",
                     lambda: sil._signed_distance_on_lattice(framed[:, :, 3], cells=cells),
                     repeat, rows)
    field = timed(f"volume: field {cells + 1}³",
                  lambda: sil._inflated_field(distance, cells=cells, thickness=params.thickness),
                  repeat, rows)
    raw: Mesh = timed("marching cubes", lambda: marching_cubes(field, level=0.0, bounds=1.0),
                      repeat, rows)
    colors = timed("colours", lambda: sil._project_colors(framed, raw.vertices), repeat, rows)
    raw.colors = colors
    mesh: Mesh = timed(f"cleanup {len(raw.faces)} -> {params.face_count} faces",
                       lambda: clean_mesh(raw, face_count=params.face_count, smooth=params.smooth),
                       repeat, rows)
    timed("generator call (all of the above but frame)",
          lambda: generator(framed, params=params, seed=0, on_progress=lambda f: None),
          repeat, rows)
    for fmt in MESH_FORMATS:
        timed(f"export {fmt}", partial(export_mesh, mesh, fmt), repeat, rows)
    timed(f"thumbnail 256² ({len(mesh.faces)} faces)", lambda: render_thumbnail(mesh),
          repeat, rows)

    # Targets: cleanup <= ~100 ms at 100k faces, thumbnail <= ~150 ms at 50k faces.
    sphere = trimesh.creation.icosphere(subdivisions=6)  # 81,920 faces
    big_raw = marching_cubes(sil._inflated_field(
        sil._signed_distance_on_lattice(framed[:, :, 3], cells=152), cells=152,
        thickness=params.thickness), level=0.0, bounds=1.0)
    big_raw.colors = sil._project_colors(framed, big_raw.vertices)
    timed(f"cleanup {len(big_raw.faces)} faces, no budget, no smoothing",
          lambda: clean_mesh(big_raw), repeat, rows)
    timed(f"cleanup {len(big_raw.faces)} faces -> 40000, smoothing",
          lambda: clean_mesh(big_raw, face_count=40_000, smooth=True), repeat, rows)
    fifty = clean_mesh(Mesh(sphere.vertices, sphere.faces), face_count=50_000)
    timed(f"thumbnail 256² ({len(fifty.faces)} faces)", lambda: render_thumbnail(fifty),
          repeat, rows)

    rng = np.random.default_rng(0)
    directions = rng.standard_normal((200_000, 3))
    splats = Gaussians(
        positions=(directions / np.linalg.norm(directions, axis=1, keepdims=True)
                   ).astype(np.float32),
        sh_dc=rng.standard_normal((200_000, 3)).astype(np.float32),
        opacity_logits=np.full(200_000, 3.0, np.float32),
        log_scales=np.full((200_000, 3), np.log(0.005), np.float32),
        rotations=np.tile(np.array([[1, 0, 0, 0]], np.float32), (200_000, 1)))
    timed("thumbnail 256² (200,000 Gaussians)", lambda: render_thumbnail(gaussians=splats),
          repeat, rows)

    width = max(len(row[0]) for row in rows)
    print(f"median of {repeat} runs; load average before: {os.getloadavg()[0]:.2f}")
    print(f"  {'step':<{width}}  {'wall':>8}     {'cpu':>8}")
    for label, wall_ms, cpu_ms in rows:
        print(f"  {label:<{width}}  {wall_ms:8.1f} ms  {cpu_ms:8.1f} ms")


if __name__ == "__main__":
    main()
