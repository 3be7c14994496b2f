"""The ``silhouette`` generator: a closed, coloured mesh inflated from the cut-out alone.

No weights and no GPU: the alpha mask becomes a rounded, front/back symmetric
volume, marching cubes extracts its surface, and the image colours it.

1. The mask's signed distance to its outline (Euclidean distance transform),
   slightly blurred so its ridges do not crease the surface.
2. A half-depth profile ``h = thickness * sqrt(d * (2 * d_max - d))``: it meets
   the outline at a right angle (rounded rims) and turns a disc into a
   sphere when ``thickness`` is 1.
3. The field ``h(x, y) - |z|`` on a cubic lattice, positive inside, closed by
   construction (negative on every face of the lattice), so marching cubes
   gives a watertight surface mirrored about ``z = 0``.
4. Vertex colours by orthographic projection along Z. A back vertex samples
   the same pixel as the front vertex in front of it, so seen from behind the
   object shows the image mirrored, as a print seen through the sheet would.
5. Cleanup and the face budget through :func:`ai_engine.geometry.mesh.clean_mesh`.

Coordinates follow the service convention (Y up, the object facing +Z, image
right = +X, image top = +Y); the mesh spans about ``[-1, 1]`` and the
exporters fit it to the unit cube.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from ai_engine.errors import GenerateError, ImagingError
from ai_engine.generators.base import RGBA, GeneratorOutput, ProgressFn
from ai_engine.geometry.marching import marching_cubes
from ai_engine.geometry.mesh import clean_mesh

FloatImage = npt.NDArray[np.float32]

#: Side of the square image :meth:`SilhouetteGenerator.frame` produces.
WORKING_SIZE_PX = 512
#: Empty margin around the object in the framed image, as a fraction of its
#: longer side; it keeps the inflated surface clear of the lattice's border.
PADDING_RATIO = 0.08
#: Alpha (0..255) above which a pixel belongs to the object.
ALPHA_THRESHOLD = 128


class SilhouetteParams(BaseModel):
    """Overrides a request may give the ``silhouette`` generator."""

    model_config = ConfigDict(extra="forbid")

    resolution: int = Field(default=128, ge=32, le=256,
                            description="marching-cubes lattice cells along each axis")
    thickness: float = Field(default=0.6, gt=0.0, le=2.0,
                             description="half-depth at the thickest point over the inscribed "
                                         "radius there (1 turns a disc into a sphere)")
    face_count: int | None = Field(default=40_000, ge=100, le=2_000_000,
                                   description="face budget; None keeps every face")
    smooth: bool = Field(default=True, description="Taubin-smooth the surface before decimation")


class SilhouetteGenerator:
    """Inflates a cut-out's alpha mask into a closed mesh coloured by the image."""

    name: ClassVar[str] = "silhouette"
    native: ClassVar[Literal["mesh", "splat"]] = "mesh"
    Params: ClassVar[type[BaseModel]] = SilhouetteParams

    def frame(self, cutout: RGBA) -> RGBA:
        """Crop to the alpha box plus a margin, pad to a square, resize to the working size.

        Raises :class:`ImagingError` (``imaging.no_object``) when no pixel is opaque enough.
        """
        rgba = np.asarray(cutout)
        if rgba.ndim != 3 or rgba.shape[2] != 4:
            raise ImagingError(f"expected an RGBA image, got shape {rgba.shape}",
                               code="imaging.bad_mode")
        rows, cols = np.nonzero(rgba[:, :, 3] >= ALPHA_THRESHOLD)
        if rows.size == 0:
            raise ImagingError("the cut-out has no opaque pixels", code="imaging.no_object")
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        side = max(bottom - top, right - left)
        square = int(np.ceil(side * (1.0 + 2.0 * PADDING_RATIO))) + 2
        # Paste the object box centred on a transparent square canvas.
        canvas = np.zeros((square, square, 4), np.uint8)
        row0 = (square - (bottom - top)) // 2
        col0 = (square - (right - left)) // 2
        canvas[row0:row0 + bottom - top, col0:col0 + right - left] = rgba[top:bottom, left:right]
        # Pillow resamples RGBA with premultiplied alpha, so transparent pixels do
        # not bleed their (meaningless) colour into the rim.
        image = Image.fromarray(canvas, "RGBA").resize(
            (WORKING_SIZE_PX, WORKING_SIZE_PX), Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.uint8).copy()

    def __call__(self, framed: RGBA, *, params: BaseModel, seed: int,
                 on_progress: ProgressFn) -> GeneratorOutput:
        """Inflate ``framed`` (from :meth:`frame`) into a coloured mesh; ``seed`` is unused."""
        del seed  # the reconstruction is deterministic
        opts = params if isinstance(params, SilhouetteParams) else \
            SilhouetteParams.model_validate(params.model_dump())
        rgba = np.asarray(framed)
        if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.shape[0] != rgba.shape[1]:
            raise ImagingError(f"expected a square RGBA image, got shape {rgba.shape}",
                               code="imaging.bad_mode")
        on_progress(0.0)

        # 1. Signed distance to the outline, sampled on the lattice's XY plane.
        cells = opts.resolution + opts.resolution % 2  # even: the Z lattice mirrors about 0
        distance = _signed_distance_on_lattice(rgba[:, :, 3], cells=cells)
        if distance.max() <= 0.0:
            raise ImagingError("the framed image has no opaque pixels", code="imaging.no_object")
        on_progress(0.2)

        # 2-3. Inflate to a closed symmetric field and extract its surface.
        field = _inflated_field(distance, cells=cells, thickness=opts.thickness)
        raw = marching_cubes(field, level=0.0, bounds=1.0)
        if raw.is_empty:
            raise GenerateError("the silhouette is too thin to make a surface",
                                code="generate.empty_mesh")
        on_progress(0.6)

        # 4. Colours by projection along Z (both sides sample the same pixel).
        raw.colors = _project_colors(rgba, raw.vertices)
        on_progress(0.7)

        # 5. Cleanup, smoothing and the face budget.
        mesh = clean_mesh(raw, face_count=opts.face_count, smooth=opts.smooth)
        if mesh.is_empty:
            raise GenerateError("cleanup left no surface", code="generate.empty_mesh")
        on_progress(1.0)
        info = {"resolution": cells, "raw_faces": len(raw.faces), "faces": len(mesh.faces),
                "vertices": len(mesh.vertices)}
        return GeneratorOutput(mesh=mesh, info=info)


def _signed_distance_on_lattice(alpha: npt.NDArray[np.uint8], *, cells: int) -> FloatImage:
    """Signed distance to the mask outline (world units, > 0 inside) at the lattice's XY points.

    Returns ``[cells + 1, cells + 1]`` indexed ``[ix, iy]`` with ``x, y`` in ``[-1, 1]``
    and ``+y`` the image's top. The distance transform runs at about two pixels per
    lattice cell: finer buys nothing once blurred, coarser shows the pixel steps.
    """
    size_px = alpha.shape[0]
    work_px = int(min(size_px, 2 * cells))
    # Antialiased downsampling keeps the outline's sub-pixel position.
    small = np.asarray(Image.fromarray(np.ascontiguousarray(alpha), "L").resize(
        (work_px, work_px), Image.Resampling.BOX)) if work_px != size_px else alpha
    mask = small >= ALPHA_THRESHOLD
    if not mask.any():
        return np.full((cells + 1, cells + 1), -1.0, np.float32)
    # The boundary lies halfway between the last inside and first outside pixel.
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    signed = np.where(mask, inside - 0.5, 0.5 - outside).astype(np.float32)
    # A blur of about one lattice cell rounds the medial-axis ridges of the
    # distance field, which would otherwise show as creases down the middle.
    signed = ndimage.gaussian_filter(signed, sigma=work_px / cells * 0.75, mode="nearest")
    # Lattice points to pixel coordinates (pixel centres at +0.5).
    lattice = np.linspace(-1.0, 1.0, cells + 1)
    cols = (lattice + 1.0) * 0.5 * work_px - 0.5
    rows = (1.0 - lattice) * 0.5 * work_px - 0.5
    grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="xy")  # [ix, iy] order
    sampled = ndimage.map_coordinates(signed, [grid_rows, grid_cols], order=1, mode="nearest")
    return (sampled * (2.0 / work_px)).astype(np.float32)


def _inflated_field(distance: FloatImage, *, cells: int, thickness: float) -> FloatImage:
    """The occupancy field ``h(x, y) - |z|`` on the ``(cells + 1)^3`` lattice over ``[-1, 1]^3``."""
    inside = np.clip(distance, 0.0, None)
    d_max = float(inside.max())
    half_depth = thickness * np.sqrt(inside * (2.0 * d_max - inside))
    # Outside the outline the field is the (negative) distance itself, which keeps
    # it continuous across the rim and negative on the lattice's border.
    height = np.where(distance > 0.0, half_depth, distance).astype(np.float32)
    # An object touching the image border gets a flat cap rather than a hole.
    for edge in (height[0], height[-1], height[:, 0], height[:, -1]):
        np.minimum(edge, -1e-3, out=edge)
    z = np.abs(np.linspace(-1.0, 1.0, cells + 1, dtype=np.float32))
    # Keep the top and bottom lattice layers outside whatever the thickness.
    z[0] = z[-1] = max(1.0, float(height.max()) + 1.0)
    return height[:, :, None] - z[None, None, :]


def _project_colors(rgba: RGBA, vertices: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """RGBA colours for ``vertices`` (in ``[-1, 1]``) sampled from ``rgba`` along Z."""
    size_px = rgba.shape[0]
    opaque = rgba[:, :, 3] >= ALPHA_THRESHOLD
    # Rim vertices fall on or just outside the outline, where straight-alpha
    # colours are meaningless: give every transparent pixel its nearest opaque
    # pixel's colour first.
    _, (near_rows, near_cols) = ndimage.distance_transform_edt(~opaque, return_indices=True)
    rgb = rgba[near_rows, near_cols, :3].astype(np.float32)
    cols = (vertices[:, 0] + 1.0) * 0.5 * size_px - 0.5
    rows = (1.0 - vertices[:, 1]) * 0.5 * size_px - 0.5
    colors = np.empty((len(vertices), 4), np.uint8)
    for channel in range(3):
        sampled = ndimage.map_coordinates(rgb[:, :, channel], [rows, cols], order=1,
                                          mode="nearest")
        colors[:, channel] = np.clip(np.rint(sampled), 0, 255).astype(np.uint8)
    colors[:, 3] = 255
    return colors


__all__ = ["SilhouetteGenerator", "SilhouetteParams"]
