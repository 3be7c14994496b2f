"""Exporters: every format reads back, the GLB is structurally valid glTF 2.0, nothing on disk."""

from __future__ import annotations

import io
import json
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trimesh

from ai_engine.errors import ExportError
from ai_engine.geometry.export import (
    CONTENT_TYPES,
    FILE_NAMES,
    MESH_FORMATS,
    export_mesh,
    fit_unit_cube,
)
from ai_engine.geometry.types import Mesh


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    """A coloured, off-centre, non-uniformly scaled sphere (colour follows position)."""
    sphere = trimesh.creation.icosphere(subdivisions=3)
    vertices = sphere.vertices * np.array([2.0, 1.0, 0.5]) + np.array([3.0, -1.0, 7.0])
    unit = (sphere.vertices + 1.0) / 2.0
    colors = np.concatenate([np.rint(unit * 255), np.full((len(unit), 1), 255)], axis=1)
    return Mesh(vertices.astype(np.float32), sphere.faces, colors.astype(np.uint8))


def _colors(mesh: Mesh) -> np.ndarray:
    assert mesh.colors is not None
    return mesh.colors


def _load(data: bytes, fmt: str) -> trimesh.Trimesh:
    loaded = trimesh.load(io.BytesIO(data), file_type=fmt, process=False)
    if isinstance(loaded, trimesh.Scene):
        assert len(loaded.geometry) == 1
        loaded = next(iter(loaded.geometry.values()))
    assert isinstance(loaded, trimesh.Trimesh)
    return loaded


@pytest.mark.parametrize("fmt", MESH_FORMATS)
def test_every_format_loads_back_fitted(mesh: Mesh, fmt: str) -> None:
    loaded = _load(export_mesh(mesh, fmt), fmt)
    assert len(loaded.faces) == len(mesh.faces)
    bounds = loaded.bounds
    assert np.allclose((bounds[0] + bounds[1]) / 2, 0.0, atol=1e-5)
    assert (bounds[1] - bounds[0]).max() == pytest.approx(1.0, abs=1e-5)
    # The aspect survives: x was twice y and four times z.
    extent = bounds[1] - bounds[0]
    assert extent / extent[0] == pytest.approx([1.0, 0.5, 0.25], abs=1e-3)


@pytest.mark.parametrize("fmt", ["glb", "ply", "obj"])
def test_vertex_colours_survive(mesh: Mesh, fmt: str) -> None:
    visual: Any = _load(export_mesh(mesh, fmt), fmt).visual
    if fmt == "glb":  # trimesh keeps COLOR_0 beside the material
        colors = np.asarray(visual.vertex_attributes["color"])
    else:
        colors = np.asarray(visual.vertex_colors)
    assert colors.shape == (len(mesh.vertices), 4)
    assert np.abs(colors.astype(int) - _colors(mesh).astype(int)).max() <= 1


def test_obj_writes_colours_on_vertex_lines(mesh: Mesh) -> None:
    lines = export_mesh(mesh, "obj").decode().splitlines()
    vertex_lines = [line.split() for line in lines if line.startswith("v ")]
    assert len(vertex_lines) == len(mesh.vertices)
    values = np.array([[float(v) for v in line[1:]] for line in vertex_lines])
    assert values.shape[1] == 6  # v x y z r g b
    assert np.abs(values[:, 3:] * 255 - _colors(mesh)[:, :3]).max() < 1.0
    assert sum(line.startswith("f ") for line in lines) == len(mesh.faces)


def test_stl_is_binary(mesh: Mesh) -> None:
    data = export_mesh(mesh, "stl")
    assert len(data) == 84 + 50 * len(mesh.faces)
    assert struct.unpack("<I", data[80:84])[0] == len(mesh.faces)


def test_ply_is_binary_with_colours(mesh: Mesh) -> None:
    data = export_mesh(mesh, "ply")
    header = data[: data.index(b"end_header")].decode()
    assert "format binary_little_endian 1.0" in header
    for name in ("red", "green", "blue", "alpha"):
        assert f"property uchar {name}" in header


def _parse_glb(data: bytes) -> tuple[dict[str, Any], bytes]:
    magic, version, length = struct.unpack("<4sII", data[:12])
    assert (magic, version, length) == (b"glTF", 2, len(data))
    json_length, json_type = struct.unpack("<II", data[12:20])
    assert json_type == 0x4E4F534A and json_length % 4 == 0
    document = json.loads(data[20:20 + json_length])
    offset = 20 + json_length
    bin_length, bin_type = struct.unpack("<II", data[offset:offset + 8])
    assert bin_type == 0x004E4942 and bin_length % 4 == 0
    assert offset + 8 + bin_length == len(data)
    return document, data[offset + 8:offset + 8 + bin_length]


def _accessor_array(document: dict[str, Any], binary: bytes, index: int) -> np.ndarray:
    accessor = document["accessors"][index]
    view = document["bufferViews"][accessor["bufferView"]]
    dtype = {5126: np.float32, 5125: np.uint32, 5121: np.uint8}[accessor["componentType"]]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[accessor["type"]]
    start = view["byteOffset"] + accessor.get("byteOffset", 0)
    array = np.frombuffer(binary, dtype, accessor["count"] * width, start)
    return array.reshape(accessor["count"], width)


def test_glb_structure(mesh: Mesh) -> None:
    document, binary = _parse_glb(export_mesh(mesh, "glb"))
    assert document["asset"]["version"] == "2.0"
    assert document["buffers"] == [{"byteLength": len(binary)}]
    for view in document["bufferViews"]:
        assert view["byteOffset"] % 4 == 0
        assert view["byteOffset"] + view["byteLength"] <= len(binary)
    primitive = document["meshes"][0]["primitives"][0]
    attributes = primitive["attributes"]
    assert set(attributes) == {"POSITION", "NORMAL", "COLOR_0"}
    assert primitive["mode"] == 4

    indices_accessor = document["accessors"][primitive["indices"]]
    assert indices_accessor["componentType"] == 5125  # UNSIGNED_INT
    indices = _accessor_array(document, binary, primitive["indices"]).reshape(-1, 3)
    assert np.array_equal(indices, mesh.faces)

    position_accessor = document["accessors"][attributes["POSITION"]]
    positions = _accessor_array(document, binary, attributes["POSITION"])
    assert position_accessor["count"] == len(mesh.vertices)
    assert position_accessor["min"] == positions.min(axis=0).tolist()
    assert position_accessor["max"] == positions.max(axis=0).tolist()
    assert np.allclose(positions, fit_unit_cube(mesh).vertices)

    normals = _accessor_array(document, binary, attributes["NORMAL"])
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    # Outward: on a convex shape the normal points away from the centre.
    assert (np.einsum("ij,ij->i", normals, positions) > 0).all()

    color_accessor = document["accessors"][attributes["COLOR_0"]]
    assert color_accessor["componentType"] == 5121 and color_accessor["normalized"] is True
    assert color_accessor["type"] == "VEC4"
    assert np.array_equal(_accessor_array(document, binary, attributes["COLOR_0"]),
                          _colors(mesh))

    material = document["materials"][primitive["material"]]["pbrMetallicRoughness"]
    assert material["metallicFactor"] == 0.0
    assert material["baseColorFactor"] == [1.0, 1.0, 1.0, 1.0]


def test_glb_without_colours_has_no_color_attribute(mesh: Mesh) -> None:
    plain = Mesh(mesh.vertices, mesh.faces)
    document, _ = _parse_glb(export_mesh(plain, "glb"))
    assert "COLOR_0" not in document["meshes"][0]["primitives"][0]["attributes"]


def test_fit_unit_cube(mesh: Mesh) -> None:
    fitted = fit_unit_cube(mesh)
    low, high = fitted.vertices.min(axis=0), fitted.vertices.max(axis=0)
    assert np.allclose(low + high, 0.0, atol=1e-6)
    assert (high - low).max() == pytest.approx(1.0, abs=1e-6)
    assert np.array_equal(fitted.faces, mesh.faces)
    assert np.array_equal(_colors(fitted), _colors(mesh))
    assert not np.shares_memory(fitted.vertices, mesh.vertices)


def test_no_temporary_files(mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Point the process's temp directory at an empty folder so nothing else writes there.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = sorted(Path(tempfile.gettempdir()).iterdir())
    for fmt in MESH_FORMATS:
        export_mesh(mesh, fmt)
    assert sorted(Path(tempfile.gettempdir()).iterdir()) == before


def test_errors(mesh: Mesh) -> None:
    with pytest.raises(ExportError) as unknown:
        export_mesh(mesh, "fbx")
    assert unknown.value.code == "export.unsupported_format"
    empty = Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64))
    with pytest.raises(ExportError) as nothing:
        export_mesh(empty, "glb")
    assert nothing.value.code == "export.empty_mesh"


def test_names_and_media_types() -> None:
    assert set(CONTENT_TYPES) == set(FILE_NAMES) == set(MESH_FORMATS)
    assert FILE_NAMES["glb"] == "model.glb"
    assert CONTENT_TYPES["glb"] == "model/gltf-binary"
