"""PNG thumbnails of a mesh or a Gaussian splat cloud, rendered on the CPU.

A small numpy z-buffer rasteriser rather than OpenGL, pyrender or trimesh's
scene renderer: those need a display or an EGL/OSMesa context, which the
service hosts (headless containers, CPU-only workers) do not have, and a
thumbnail needs nothing a few vectorised array passes cannot do.

The view is a three-quarter one: orthographic, from 30° to the right of the
front (+Z) and 20° above, the object fitted into the frame with a margin.
Meshes are Lambert-shaded with interpolated vertex colours and normals
(two-sided, so open meshes show their inside); Gaussians are drawn as small
opaque discs in their own colours (their lighting is baked in). Meshes are
rendered at twice the size and box-filtered down, which antialiases edges.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image

from ai_engine.geometry.mesh import vertex_normals
from ai_engine.geometry.types import Gaussians, Mesh

AZIMUTH_DEG = 30.0
ELEVATION_DEG = 20.0
MARGIN_RATIO = 0.08
SUPERSAMPLE = 2
AMBIENT = 0.35
DEFAULT_COLOR = (200, 200, 200)
#: Opacity below which a Gaussian is left out of the thumbnail.
MIN_OPACITY = 0.05
#: Most Gaussians drawn; larger clouds are thinned evenly (a thumbnail cannot show more).
MAX_SPLATS = 160_000
#: Largest disc drawn for one Gaussian, in output pixels.
MAX_SPLAT_RADIUS_PX = 4
#: Most (splat, pixel) pairs rasterised; discs shrink to stay under it.
MAX_SPLAT_CANDIDATES = 1_500_000
_SH_C0 = 0.28209479177387814

Background = tuple[int, int, int, int]


def render_thumbnail(mesh: Mesh | None = None, *, gaussians: Gaussians | None = None,
                     size: int = 256, background: Background = (0, 0, 0, 0)) -> bytes:
    """A ``size`` x ``size`` RGBA PNG of ``mesh`` (or, without one, ``gaussians``).

    ``background`` is the RGBA of empty pixels (transparent by default). With
    neither input, or an empty one, the image is all background.
    """
    draw_mesh = mesh is not None and not mesh.is_empty
    # Splats overlap anyway: drawing them supersampled would only multiply the work.
    render_px = size * SUPERSAMPLE if draw_mesh else size
    color = np.zeros((render_px, render_px, 3), np.float32)
    coverage = np.zeros((render_px, render_px), np.float32)
    camera = _camera()
    if mesh is not None and draw_mesh:
        _draw_mesh(mesh, camera, color, coverage)
    elif gaussians is not None and len(gaussians) > 0:
        _draw_gaussians(gaussians, camera, color, coverage)
    return _encode(color, coverage, size=size, background=background)


def _camera() -> npt.NDArray[np.float64]:
    """Rows: screen right, screen up, toward the viewer (world coordinates)."""
    azimuth, elevation = np.radians(AZIMUTH_DEG), np.radians(ELEVATION_DEG)
    toward = np.array([np.sin(azimuth) * np.cos(elevation), np.sin(elevation),
                       np.cos(azimuth) * np.cos(elevation)])
    right = np.cross([0.0, 1.0, 0.0], toward)
    right /= np.linalg.norm(right)
    up = np.cross(toward, right)
    return np.stack([right, up, toward])


def _rotate(points: npt.NDArray[np.floating], camera: npt.NDArray[np.float64]
            ) -> npt.NDArray[np.float64]:
    """``points @ camera.T`` written out: a BLAS call here would start or contend for
    its thread pool, which costs more than the nine multiply-adds."""
    p = points.astype(np.float64)
    return np.stack([p[:, 0] * row[0] + p[:, 1] * row[1] + p[:, 2] * row[2]
                     for row in camera], axis=1)


def _to_screen(points: npt.NDArray[np.floating], camera: npt.NDArray[np.float64],
               render_px: int) -> tuple[npt.NDArray[np.float64], float]:
    """Pixel coordinates ``(x right, y down, depth toward viewer)`` and the world-to-pixel scale."""
    view = _rotate(points, camera)
    low, high = view.min(axis=0), view.max(axis=0)
    extent = float(max(high[0] - low[0], high[1] - low[1], 1e-9))
    scale = render_px * (1.0 - 2.0 * MARGIN_RATIO) / extent
    center = (low + high) * 0.5
    screen = np.empty_like(view)
    screen[:, 0] = (view[:, 0] - center[0]) * scale + render_px * 0.5
    screen[:, 1] = render_px * 0.5 - (view[:, 1] - center[1]) * scale
    screen[:, 2] = view[:, 2]
    return screen, scale


def _draw_mesh(mesh: Mesh, camera: npt.NDArray[np.float64], color: npt.NDArray[np.float32],
               coverage: npt.NDArray[np.float32]) -> None:
    """Rasterise ``mesh`` into ``color``/``coverage`` (nearest surface wins per pixel).

    Every face is drawn (no back-face culling) so open meshes have no see-through
    holes; float32 keeps the per-candidate arrays small, ample for 512 pixels.
    """
    render_px = color.shape[0]
    screen, _ = _to_screen(mesh.vertices, camera, render_px)
    corners = screen.astype(np.float32)[mesh.faces]  # [F, 3 corners, (x, y, depth)]
    x, y, depth = corners[:, :, 0], corners[:, :, 1], corners[:, :, 2]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])

    # 1. Candidate pixels: every pixel centre inside each face's bounding box.
    x0 = np.clip(np.ceil(x.min(axis=1) - 0.5), 0, render_px).astype(np.int32)
    x1 = np.clip(np.floor(x.max(axis=1) - 0.5) + 1, 0, render_px).astype(np.int32)
    y0 = np.clip(np.ceil(y.min(axis=1) - 0.5), 0, render_px).astype(np.int32)
    y1 = np.clip(np.floor(y.max(axis=1) - 0.5) + 1, 0, render_px).astype(np.int32)
    width = np.clip(x1 - x0, 0, None)
    count = width * np.clip(y1 - y0, 0, None)
    count[np.abs(area) < 1e-9] = 0
    face = np.repeat(np.arange(len(count), dtype=np.int32), count)
    if face.size == 0:
        return
    local = np.arange(face.size, dtype=np.int32) - np.repeat(
        (np.cumsum(count) - count).astype(np.int32), count)
    face_width = width[face]
    row = ((local + np.float32(0.5)) // face_width).astype(np.int32)  # float division is faster
    px = x0[face] + (local - row * face_width)
    py = y0[face] + row

    # 2. Barycentric coordinates as planes over the screen, w_k = a_k x + b_k y + c_k;
    # keep the candidates inside their face (a little slack closes cracks on shared edges).
    inv_area = np.zeros_like(area)
    np.divide(1.0, area, out=inv_area, where=count > 0)
    plane_a = (y[:, 1:] - y[:, [2, 0]]) * inv_area[:, None]
    plane_b = (x[:, [2, 0]] - x[:, 1:]) * inv_area[:, None]
    plane_c = (x[:, 1:] * y[:, [2, 0]] - x[:, [2, 0]] * y[:, 1:]) * inv_area[:, None]
    cx = px.astype(np.float32) + np.float32(0.5)
    cy = py.astype(np.float32) + np.float32(0.5)
    w0 = plane_a[face, 0] * cx + plane_b[face, 0] * cy + plane_c[face, 0]
    w1 = plane_a[face, 1] * cx + plane_b[face, 1] * cy + plane_c[face, 1]
    w2 = np.float32(1.0) - w0 - w1
    slack = np.float32(-1e-5)
    inside = (w0 >= slack) & (w1 >= slack) & (w2 >= slack)
    face, w0, w1, w2 = face[inside], w0[inside], w1[inside], w2[inside]
    pixel = (py * render_px + px)[inside]
    z = w0 * depth[face, 0] + w1 * depth[face, 1] + w2 * depth[face, 2]

    # 3. Depth test: the candidate nearest the viewer per pixel.
    zbuffer = np.full(render_px * render_px, -np.inf, z.dtype)
    np.maximum.at(zbuffer, pixel, z)
    pick = np.flatnonzero(z == zbuffer[pixel])
    face, pixel = face[pick], pixel[pick]
    weights = np.stack([w0[pick], w1[pick], w2[pick]], axis=1).astype(np.float64)

    # 4. Shading: interpolated colour and normal, two-sided Lambert.
    corner_ids = mesh.faces[face]
    normals = _rotate(vertex_normals(mesh.vertices, mesh.faces), camera)
    normal = np.einsum("ij,ijk->ik", weights, normals[corner_ids])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    normal[normal[:, 2] < 0.0] *= -1.0  # facing away: an open mesh seen from inside
    light = np.array([-0.35, 0.55, 0.76])  # camera space: from the upper left, in front
    light /= np.linalg.norm(light)
    lambert = normal[:, 0] * light[0] + normal[:, 1] * light[1] + normal[:, 2] * light[2]
    shade = AMBIENT + (1.0 - AMBIENT) * np.clip(lambert, 0.0, 1.0)
    if mesh.colors is None:
        base = np.broadcast_to(np.array(DEFAULT_COLOR, np.float64), (len(face), 3))
    else:
        base = np.einsum("ij,ijk->ik", weights, mesh.colors[corner_ids, :3].astype(np.float64))
    color.reshape(-1, 3)[pixel] = base * shade[:, None]
    coverage.reshape(-1)[pixel] = 1.0


def _draw_gaussians(gaussians: Gaussians, camera: npt.NDArray[np.float64],
                    color: npt.NDArray[np.float32], coverage: npt.NDArray[np.float32]) -> None:
    """Draw each visible Gaussian as an opaque disc about its projected size."""
    render_px = color.shape[0]
    opacity = 1.0 / (1.0 + np.exp(-gaussians.opacity_logits.astype(np.float64)))
    keep = np.flatnonzero(opacity >= MIN_OPACITY)
    if keep.size > MAX_SPLATS:
        keep = keep[np.linspace(0, keep.size - 1, MAX_SPLATS).astype(np.int64)]
    if keep.size == 0:
        return
    screen, scale = _to_screen(gaussians.positions[keep], camera, render_px)
    rgb = np.clip(0.5 + _SH_C0 * gaussians.sh_dc[keep].astype(np.float64), 0.0, 1.0) * 255.0
    sigma_px = np.exp(gaussians.log_scales[keep].astype(np.float64)).max(axis=1) * scale
    # About two standard deviations, and at least a 3x3 block so a surface
    # sampled by small Gaussians closes up.
    radius = np.clip(np.ceil(2.0 * sigma_px), 1, MAX_SPLAT_RADIUS_PX).astype(np.int64)
    # Cap the work: shrink the largest discs (not below 1) until the candidate count fits.
    discs = [_disc(r) for r in range(MAX_SPLAT_RADIUS_PX + 1)]
    per_radius = np.bincount(radius, minlength=MAX_SPLAT_RADIUS_PX + 1)
    while radius.max() > 1 and sum(
            int(n) * len(discs[r][0]) for r, n in enumerate(per_radius)) > MAX_SPLAT_CANDIDATES:
        top = int(radius.max())
        radius[radius == top] = top - 1
        per_radius[top - 1] += per_radius[top]
        per_radius[top] = 0

    # Candidates: for each radius, the pixel offsets of a disc of that radius.
    center_x = np.floor(screen[:, 0]).astype(np.int64)
    center_y = np.floor(screen[:, 1]).astype(np.int64)
    owners, pixels = [], []
    for r in np.flatnonzero(per_radius):
        members = np.flatnonzero(radius == r)
        offset_x, offset_y = discs[r]
        px = (center_x[members, None] + offset_x[None, :]).ravel()
        py = (center_y[members, None] + offset_y[None, :]).ravel()
        valid = (px >= 0) & (px < render_px) & (py >= 0) & (py < render_px)
        owners.append(np.repeat(members, len(offset_x))[valid])
        pixels.append(py[valid] * render_px + px[valid])
    owner, pixel = np.concatenate(owners), np.concatenate(pixels)

    # Depth test: the splat nearest the viewer per pixel.
    z = screen[owner, 2]
    zbuffer = np.full(render_px * render_px, -np.inf)
    np.maximum.at(zbuffer, pixel, z)
    pick = np.flatnonzero(z == zbuffer[pixel])
    color.reshape(-1, 3)[pixel[pick]] = rgb[owner[pick]]
    coverage.reshape(-1)[pixel[pick]] = 1.0


def _disc(radius: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Pixel offsets ``(x, y)`` covering a disc of ``radius`` pixels (0: one pixel)."""
    offset_y, offset_x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    inside = offset_x ** 2 + offset_y ** 2 <= radius * radius + radius
    return offset_x[inside].astype(np.int64), offset_y[inside].astype(np.int64)


def _encode(color: npt.NDArray[np.float32], coverage: npt.NDArray[np.float32], *, size: int,
            background: Background) -> bytes:
    """Box-filter the supersampled buffers down to ``size`` and composite over ``background``."""
    factor = color.shape[0] // size
    premultiplied = (color * coverage[:, :, None]).reshape(size, factor, size, factor, 3)
    rgb_sum = premultiplied.mean(axis=(1, 3))
    alpha = coverage.reshape(size, factor, size, factor).mean(axis=(1, 3))
    back_rgb = np.array(background[:3], np.float32)
    back_alpha = background[3] / 255.0
    # "Over" compositing of the rendering onto the background, in straight alpha.
    out_alpha = alpha + back_alpha * (1.0 - alpha)
    out_rgb = rgb_sum + back_rgb * back_alpha * (1.0 - alpha)[:, :, None]
    safe = np.maximum(out_alpha, 1e-6)[:, :, None]
    pixels = np.empty((size, size, 4), np.uint8)
    pixels[:, :, :3] = np.clip(np.rint(out_rgb / safe), 0, 255)
    pixels[:, :, 3] = np.clip(np.rint(out_alpha * 255.0), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


__all__ = ["render_thumbnail"]
