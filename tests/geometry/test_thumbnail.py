"""CPU thumbnails: a valid PNG, the object in the middle, background at the corners."""

from __future__ import annotations

import io

import numpy as np
import pytest
import trimesh
from PIL import Image

from ai_engine.geometry.thumbnail import render_thumbnail
from ai_engine.geometry.types import Gaussians, Mesh


def _sphere(colors: bool = True) -> Mesh:
    sphere = trimesh.creation.icosphere(subdivisions=4)
    # Red on the +X half, blue on the -X half.
    rgba = np.where(sphere.vertices[:, :1] > 0, [[230, 20, 20, 255]], [[20, 20, 230, 255]])
    return Mesh(sphere.vertices, sphere.faces, rgba.astype(np.uint8) if colors else None)


def _decode(png: bytes, size: int = 256) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(png))
    image.verify()
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (size, size) and image.mode == "RGBA"
    return np.asarray(image)


def test_mesh_in_the_middle_background_at_corners() -> None:
    pixels = _decode(render_thumbnail(_sphere()))
    assert pixels[118:138, 118:138, 3].min() == 255
    for row, col in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        assert pixels[row, col, 3] == 0
    covered = (pixels[:, :, 3] > 0).mean()
    assert 0.4 < covered < 0.8  # a disc filling most of the frame, with a margin


def test_image_right_is_world_plus_x_and_shading_varies() -> None:
    pixels = _decode(render_thumbnail(_sphere())).astype(int)
    middle_row = pixels[128]
    opaque = np.flatnonzero(middle_row[:, 3] == 255)
    left, right = middle_row[opaque[5]], middle_row[opaque[-5]]
    assert left[2] > left[0]      # blue (-X) on the left
    assert right[0] > right[2]    # red (+X) on the right
    # Lambert shading: the same colour is lit differently across the sphere.
    reds = pixels[(pixels[:, :, 3] == 255) & (pixels[:, :, 0] > pixels[:, :, 2])][:, 0]
    assert reds.max() - reds.min() > 60


def test_size_background_and_uncoloured_mesh() -> None:
    pixels = _decode(render_thumbnail(_sphere(colors=False), size=128,
                                      background=(255, 255, 255, 255)), size=128)
    assert tuple(pixels[0, 0]) == (255, 255, 255, 255)
    centre = pixels[64, 64]
    assert centre[3] == 255 and abs(int(centre[0]) - int(centre[2])) < 5  # grey
    assert centre[0] < 255


def test_gaussians_are_drawn() -> None:
    rng = np.random.default_rng(0)
    count = 20_000
    directions = rng.standard_normal((count, 3))
    positions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    gaussians = Gaussians(
        positions=positions.astype(np.float32),
        sh_dc=np.tile(np.array([[1.5, -1.5, -1.5]], np.float32), (count, 1)),  # red
        opacity_logits=np.full(count, 4.0, np.float32),
        log_scales=np.full((count, 3), np.log(0.03), np.float32),
        rotations=np.tile(np.array([[1, 0, 0, 0]], np.float32), (count, 1)),
    )
    pixels = _decode(render_thumbnail(gaussians=gaussians))
    centre = pixels[108:148, 108:148]
    assert (centre[:, :, 3] == 255).mean() > 0.95
    assert (centre[:, :, 0] > 200).all() and (centre[:, :, 2] < 60).all()
    assert pixels[0, 0, 3] == 0 and pixels[-1, -1, 3] == 0


@pytest.mark.parametrize("mesh", [None, Mesh(np.zeros((0, 3), np.float32),
                                                 np.zeros((0, 3), np.int64))])
def test_nothing_to_draw_is_all_background(mesh: Mesh | None) -> None:
    pixels = _decode(render_thumbnail(mesh))
    assert pixels[:, :, 3].max() == 0
