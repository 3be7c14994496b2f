"""Mesh exporters: GLB, STL, OBJ and PLY, all in memory (no temporary files).

Every format gets the mesh fitted to the unit cube ``[-0.5, 0.5]^3`` (centred,
longest side 1) in the service convention: Y up, the object facing +Z.

GLB is written here rather than by trimesh: trimesh's GLB has no material, so
viewers fall back to the glTF default material (fully metallic), which shows
vertex colours almost black. Ours carries one non-metallic material whose base
colour is white, so ``COLOR_0`` is what the viewer shows. STL and PLY go
through trimesh's exporters, which write those formats correctly and fast.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Literal, get_args

import numpy as np
import trimesh

from ai_engine.errors import ExportError
from ai_engine.geometry.mesh import vertex_normals
from ai_engine.geometry.types import Mesh

MeshFormat = Literal["glb", "stl", "obj", "ply"]
MESH_FORMATS: tuple[str, ...] = get_args(MeshFormat)

CONTENT_TYPES: dict[str, str] = {
    "glb": "model/gltf-binary",
    "stl": "model/stl",
    "obj": "model/obj",
    "ply": "application/ply",
}
FILE_NAMES: dict[str, str] = {fmt: f"model.{fmt}" for fmt in MESH_FORMATS}

# glTF 2.0 constants.
_GLB_MAGIC = b"glTF"
_CHUNK_JSON = 0x4E4F534A
_CHUNK_BIN = 0x004E4942
_FLOAT = 5126
_UNSIGNED_BYTE = 5121
_UNSIGNED_INT = 5125
_ARRAY_BUFFER = 34962
_ELEMENT_ARRAY_BUFFER = 34963
_TRIANGLES = 4


def fit_unit_cube(mesh: Mesh) -> Mesh:
    """A copy of ``mesh`` centred on the origin, longest side 1 (inside ``[-0.5, 0.5]^3``)."""
    if len(mesh.vertices) == 0:
        return Mesh(mesh.vertices.copy(), mesh.faces.copy(),
                    None if mesh.colors is None else mesh.colors.copy())
    low, high = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    extent = float((high - low).max())
    scale = 1.0 / extent if extent > 0.0 else 1.0
    vertices = (mesh.vertices - (low + high) * 0.5) * scale
    return Mesh(vertices.astype(np.float32), mesh.faces.copy(),
                None if mesh.colors is None else mesh.colors.copy())


def export_mesh(mesh: Mesh, fmt: str, *, fit: bool = True) -> bytes:
    """``mesh`` encoded as ``fmt`` (one of :data:`MESH_FORMATS`), fitted to the unit cube.

    Raises :class:`ExportError`: ``export.unsupported_format`` for an unknown
    format, ``export.empty_mesh`` for a mesh without faces.
    """
    if fmt not in MESH_FORMATS:
        raise ExportError(f"unknown mesh format {fmt!r}; expected one of {MESH_FORMATS}",
                          code="export.unsupported_format")
    if mesh.is_empty:
        raise ExportError("the mesh has no faces", code="export.empty_mesh")
    if fit:
        mesh = fit_unit_cube(mesh)
    if fmt == "glb":
        return _glb(mesh)
    if fmt == "obj":
        return _obj(mesh)
    tri = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False,
                          validate=False)
    if mesh.colors is not None:
        tri.visual = trimesh.visual.ColorVisuals(tri, vertex_colors=mesh.colors)
    if fmt == "stl":
        return bytes(trimesh.exchange.stl.export_stl(tri))
    return bytes(trimesh.exchange.ply.export_ply(tri, encoding="binary", vertex_normal=False))


def _obj(mesh: Mesh) -> bytes:
    """Wavefront OBJ: ``v x y z [r g b]`` (colours as 0..1 floats, the common extension)
    and 1-based ``f a b c``.

    Written here because trimesh's OBJ writer formats line by line and takes about
    three times as long; one ``%`` over the whole array runs in C.
    """
    if mesh.colors is None:
        values = mesh.vertices.astype(np.float64)
        vertex_line = "v %.6f %.6f %.6f\n"
    else:
        values = np.concatenate([mesh.vertices.astype(np.float64),
                                 mesh.colors[:, :3].astype(np.float64) / 255.0], axis=1)
        vertex_line = "v %.6f %.6f %.6f %.4f %.4f %.4f\n"
    header = f"# ai_engine\n# vertices {len(mesh.vertices)} faces {len(mesh.faces)}\n"
    vertex_text = (vertex_line * len(values)) % tuple(values.ravel().tolist())
    face_text = ("f %d %d %d\n" * len(mesh.faces)) % tuple((mesh.faces + 1).ravel().tolist())
    return (header + vertex_text + face_text).encode("ascii")


def _glb(mesh: Mesh) -> bytes:
    """glTF 2.0 binary: one mesh, one primitive, positions, normals, COLOR_0, uint32 indices."""
    positions = np.ascontiguousarray(mesh.vertices, np.float32)
    normals = vertex_normals(positions, mesh.faces)
    indices = np.ascontiguousarray(mesh.faces, np.uint32).ravel()
    blocks: list[tuple[bytes, int | None]] = [
        (indices.tobytes(), _ELEMENT_ARRAY_BUFFER),
        (positions.tobytes(), _ARRAY_BUFFER),
        (normals.tobytes(), _ARRAY_BUFFER),
    ]
    accessors: list[dict[str, Any]] = [
        {"bufferView": 0, "componentType": _UNSIGNED_INT, "count": int(indices.size),
         "type": "SCALAR", "min": [int(indices.min())], "max": [int(indices.max())]},
        {"bufferView": 1, "componentType": _FLOAT, "count": len(positions), "type": "VEC3",
         "min": positions.min(axis=0).tolist(), "max": positions.max(axis=0).tolist()},
        {"bufferView": 2, "componentType": _FLOAT, "count": len(normals), "type": "VEC3"},
    ]
    attributes = {"POSITION": 1, "NORMAL": 2}
    if mesh.colors is not None:
        colors = np.ascontiguousarray(mesh.colors, np.uint8)
        blocks.append((colors.tobytes(), _ARRAY_BUFFER))
        accessors.append({"bufferView": 3, "componentType": _UNSIGNED_BYTE, "normalized": True,
                          "count": len(colors), "type": "VEC4"})
        attributes["COLOR_0"] = 3

    buffer_views: list[dict[str, Any]] = []
    binary = bytearray()
    for data, target in blocks:
        binary.extend(b"\0" * (-len(binary) % 4))  # every view starts 4-byte aligned
        view: dict[str, Any] = {"buffer": 0, "byteOffset": len(binary), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        buffer_views.append(view)
        binary.extend(data)
    binary.extend(b"\0" * (-len(binary) % 4))

    document = {
        "asset": {"version": "2.0", "generator": "ai_engine"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "model"}],
        "meshes": [{"name": "model", "primitives": [
            {"attributes": attributes, "indices": 0, "material": 0, "mode": _TRIANGLES}]}],
        "materials": [{"name": "vertex_colors", "doubleSided": False,
                       "pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0],
                                                "metallicFactor": 0.0,
                                                "roughnessFactor": 0.9}}],
        "accessors": accessors,
        "bufferViews": buffer_views,
        "buffers": [{"byteLength": len(binary)}],
    }
    json_chunk = json.dumps(document, separators=(",", ":")).encode("utf-8")
    json_chunk += b" " * (-len(json_chunk) % 4)  # the JSON chunk pads with spaces
    total = 12 + 8 + len(json_chunk) + 8 + len(binary)
    return b"".join([
        struct.pack("<4sII", _GLB_MAGIC, 2, total),
        struct.pack("<II", len(json_chunk), _CHUNK_JSON), json_chunk,
        struct.pack("<II", len(binary), _CHUNK_BIN), bytes(binary),
    ])


__all__ = ["CONTENT_TYPES", "FILE_NAMES", "MESH_FORMATS", "export_mesh", "fit_unit_cube"]
