"""The silhouette generator on a real photo cut-out and on an asymmetric synthetic shape."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import skimage
import trimesh
from PIL import Image
from pydantic import ValidationError
from scipy import ndimage
from scipy.spatial import cKDTree

from ai_engine.errors import Canceled, ImagingError
from ai_engine.generators.base import GeneratorOutput
from ai_engine.generators.silhouette import (
    WORKING_SIZE_PX,
    SilhouetteGenerator,
    SilhouetteParams,
)
from ai_engine.geometry.types import Mesh

LOGO = os.path.join(os.path.dirname(skimage.__file__), "data", "logo.png")
RED, BLUE, GREEN = (220, 30, 30), (30, 40, 210), (40, 200, 60)


def _mask_box(alpha: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(alpha >= 128)
    return int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)


@pytest.fixture(scope="module")
def logo_cutout() -> np.ndarray:
    """scikit-image's logo (a photo of a snake in a disc) cut out from its white
    surround, with the left part cut away so the outline is not square."""
    rgba = np.asarray(Image.open(LOGO).convert("RGBA")).copy()
    not_white = rgba[:, :, :3].min(axis=2) < 235
    # The white S-shaped stroke across the disc belongs to the object.
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(not_white, iterations=8))
    rgba[:, :, 3] = np.where(mask, 255, 0)
    rgba[:, :150, 3] = 0
    return rgba


@pytest.fixture(scope="module")
def l_cutout() -> np.ndarray:
    """An 'L': a tall red stem on the left, a blue foot along the bottom to the right,
    a green square at the stem's top."""
    rgba = np.zeros((420, 320, 4), np.uint8)
    rgba[40:380, 40:110] = (*RED, 255)
    rgba[40:110, 40:110] = (*GREEN, 255)
    rgba[310:380, 40:280] = (*BLUE, 255)
    return rgba


def _mesh(output: GeneratorOutput) -> Mesh:
    assert output.mesh is not None and output.mesh.colors is not None
    return output.mesh


def _colors(mesh: Mesh) -> np.ndarray:
    assert mesh.colors is not None
    return mesh.colors


def _generate(cutout: np.ndarray, **params: Any) -> tuple[np.ndarray, Mesh]:
    generator = SilhouetteGenerator()
    framed = generator.frame(cutout)
    output = generator(framed, params=SilhouetteParams(**params), seed=0,
                       on_progress=lambda fraction: None)
    return framed, _mesh(output)


@pytest.fixture(scope="module")
def logo_result(logo_cutout: np.ndarray) -> tuple[np.ndarray, Mesh]:
    return _generate(logo_cutout)


@pytest.fixture(scope="module")
def l_result(l_cutout: np.ndarray) -> tuple[np.ndarray, Mesh]:
    return _generate(l_cutout)


def _trimesh(mesh: Mesh) -> trimesh.Trimesh:
    return trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)


@pytest.mark.parametrize("which", ["logo_result", "l_result"])
def test_closed_outward_mesh_within_budget(which: str, request: pytest.FixtureRequest) -> None:
    _, mesh = request.getfixturevalue(which)
    assert not mesh.is_empty
    assert _colors(mesh).shape == (len(mesh.vertices), 4)
    assert len(mesh.faces) <= 40_000  # the default budget
    tri = _trimesh(mesh)
    assert tri.is_watertight
    assert tri.is_winding_consistent
    assert tri.volume > 0.0  # faces point outward
    assert len(tri.split(only_watertight=False)) == 1


@pytest.mark.parametrize("which", [("logo_cutout", "logo_result"), ("l_cutout", "l_result")])
def test_outline_aspect_matches_the_mask(which: tuple[str, str],
                                         request: pytest.FixtureRequest) -> None:
    cutout = request.getfixturevalue(which[0])
    _, mesh = request.getfixturevalue(which[1])
    width_px, height_px = _mask_box(cutout[:, :, 3])
    extent = mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)
    assert extent[0] / extent[1] == pytest.approx(width_px / height_px, rel=0.1)
    assert extent[2] < max(extent[0], extent[1])  # an inflated outline, not a blob


def test_l_is_not_mirrored(l_result: tuple[np.ndarray, Mesh]) -> None:
    vertices = l_result[1].vertices
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    middle = (low + high) / 2
    # The foot reaches right (+X) at the bottom (-Y); the stem rises at the left.
    assert vertices[np.argmax(vertices[:, 0]), 1] < middle[1]
    assert vertices[np.argmax(vertices[:, 1]), 0] < middle[0]
    # Right half of the bounding box is almost all foot: little mass high up there.
    right = vertices[vertices[:, 0] > middle[0]]
    assert np.mean(right[:, 1] < middle[1]) > 0.95


def test_l_colours_on_the_right_parts(l_result: tuple[np.ndarray, Mesh]) -> None:
    mesh = l_result[1]
    vertices, colors = mesh.vertices, _colors(mesh)[:, :3].astype(int)
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    span = high - low
    foot_tip = vertices[:, 0] > low[0] + 0.8 * span[0]
    stem_top = vertices[:, 1] > low[1] + 0.9 * span[1]
    stem_middle = (np.abs(vertices[:, 1] - (low[1] + 0.5 * span[1])) < 0.1 * span[1])
    for region, expected in ((foot_tip, BLUE), (stem_top, GREEN), (stem_middle, RED)):
        assert region.sum() > 20
        assert np.abs(np.median(colors[region], axis=0) - expected).max() < 10


def test_front_colours_match_the_image(logo_result: tuple[np.ndarray, Mesh]) -> None:
    framed, mesh = logo_result
    vertices, colors = mesh.vertices, _colors(mesh)[:, :3].astype(float)
    # Vertices well inside the outline on the front: where projection is exact.
    front = vertices[:, 2] > 0.5 * vertices[:, 2].max()
    size = framed.shape[0]
    cols = np.clip(((vertices[front, 0] + 1) / 2 * size).astype(int), 0, size - 1)
    rows = np.clip(((1 - vertices[front, 1]) / 2 * size).astype(int), 0, size - 1)
    # The photo has fine texture and decimation averages colours: compare with a
    # slightly blurred image.
    blurred = ndimage.uniform_filter(framed[:, :, :3].astype(float), size=(9, 9, 1))
    error = np.abs(colors[front] - blurred[rows, cols]).mean()
    mirrored = np.abs(colors[front] - blurred[rows, size - 1 - cols]).mean()
    assert front.sum() > 1000
    assert error < 12.0
    assert mirrored > 3 * error


@pytest.mark.parametrize("which", ["logo_result", "l_result"])
def test_symmetric_front_to_back(which: str, request: pytest.FixtureRequest) -> None:
    _, mesh = request.getfixturevalue(which)
    vertices, colors = mesh.vertices, _colors(mesh)
    assert vertices[:, 2].max() == pytest.approx(-vertices[:, 2].min(), rel=0.02)
    mirrored = vertices * np.array([1.0, 1.0, -1.0], np.float32)
    distance, nearest = cKDTree(vertices).query(mirrored)
    cell = 2.0 / SilhouetteParams().resolution
    assert np.quantile(distance, 0.99) < 1.5 * cell
    # The back shows the same colours as the front just in front of it.
    close = distance < 0.5 * cell
    colour_gap = np.abs(colors[close, :3].astype(int) - colors[nearest[close], :3]).mean()
    assert colour_gap < 8.0


def test_thickness_one_turns_a_disc_into_a_sphere() -> None:
    rows, cols = np.mgrid[0:300, 0:300]
    disc = np.zeros((300, 300, 4), np.uint8)
    disc[(rows - 150) ** 2 + (cols - 150) ** 2 < 120 ** 2] = (200, 200, 200, 255)
    _, mesh = _generate(disc, thickness=1.0, resolution=64)
    extent = mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)
    assert extent[2] / extent[0] == pytest.approx(1.0, rel=0.1)
    _, thin = _generate(disc, thickness=0.3, resolution=64)
    thin_extent = thin.vertices.max(axis=0) - thin.vertices.min(axis=0)
    assert thin_extent[2] / thin_extent[0] == pytest.approx(0.3, rel=0.15)


def test_deterministic_and_seed_independent(l_cutout: np.ndarray) -> None:
    generator = SilhouetteGenerator()
    framed = generator.frame(l_cutout)
    params = SilhouetteParams.model_validate({"resolution": 64})
    first = _mesh(generator(framed, params=params, seed=1, on_progress=lambda f: None))
    second = _mesh(generator(framed, params=params, seed=2, on_progress=lambda f: None))
    assert np.array_equal(first.vertices, second.vertices)
    assert np.array_equal(first.faces, second.faces)
    assert np.array_equal(_colors(first), _colors(second))


def test_face_budget_and_progress(logo_cutout: np.ndarray) -> None:
    generator = SilhouetteGenerator()
    seen: list[float] = []
    params = SilhouetteParams.model_validate({"face_count": 5000, "smooth": False})
    mesh = _mesh(generator(generator.frame(logo_cutout), params=params, seed=0,
                           on_progress=seen.append))
    assert 4000 <= len(mesh.faces) <= 5000
    assert _trimesh(mesh).is_watertight
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == 1.0


def test_cancel_from_progress_stops_the_run(l_cutout: np.ndarray) -> None:
    generator = SilhouetteGenerator()

    def cancel(fraction: float) -> None:
        if fraction > 0.0:
            raise Canceled("canceled")

    with pytest.raises(Canceled):
        generator(generator.frame(l_cutout), params=SilhouetteParams(), seed=0,
                  on_progress=cancel)


def test_frame_crops_pads_and_squares(l_cutout: np.ndarray) -> None:
    canvas = np.zeros((900, 700, 4), np.uint8)
    canvas[300:720, 200:520] = l_cutout  # off-centre on a large canvas
    framed = SilhouetteGenerator().frame(canvas)
    assert framed.shape == (WORKING_SIZE_PX, WORKING_SIZE_PX, 4) and framed.dtype == np.uint8
    width_px, height_px = _mask_box(framed[:, :, 3])
    assert height_px == pytest.approx(WORKING_SIZE_PX / 1.16, rel=0.03)  # longer side + padding
    assert width_px / height_px == pytest.approx(240 / 340, rel=0.03)
    rows, cols = np.nonzero(framed[:, :, 3] >= 128)
    assert (rows.min() + rows.max()) / 2 == pytest.approx(WORKING_SIZE_PX / 2, abs=3)
    assert (cols.min() + cols.max()) / 2 == pytest.approx(WORKING_SIZE_PX / 2, abs=3)
    assert framed[0, 0, 3] == 0 and framed[-1, -1, 3] == 0


def test_frame_refuses_an_empty_cutout() -> None:
    with pytest.raises(ImagingError) as caught:
        SilhouetteGenerator().frame(np.zeros((64, 64, 4), np.uint8))
    assert caught.value.code == "imaging.no_object"


def test_params_are_strict() -> None:
    assert SilhouetteGenerator.name == "silhouette" and SilhouetteGenerator.native == "mesh"
    assert SilhouetteGenerator.Params is SilhouetteParams
    SilhouetteParams(resolution=32, thickness=1.5, face_count=None, smooth=False)
    assert SilhouetteParams().face_count == 40_000
    for bad in ({"steps": 10}, {"resolution": 1024}, {"thickness": 0.0}, {"face_count": 3}):
        with pytest.raises(ValidationError):
            SilhouetteParams.model_validate(bad)
