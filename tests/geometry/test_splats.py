"""Gaussian splat files: exact PLY, quantised SPZ, axis conventions, splats from a mesh."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import trimesh

from ai_engine.errors import ExportError, GenerateError, InvalidInput
from ai_engine.geometry.splats import (
    SH_C0,
    gaussians_from_mesh,
    read_ply,
    read_spz,
    write_ply,
    write_spz,
)
from ai_engine.geometry.types import Gaussians, Mesh

FIELDS = ("positions", "sh_dc", "opacity_logits", "log_scales", "rotations", "sh_rest")


def random_cloud(n: int = 500, k: int = 8, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return Gaussians(
        positions=rng.uniform(-1.5, 1.5, (n, 3)).astype(np.float32),
        sh_dc=rng.uniform(-3.0, 3.0, (n, 3)).astype(np.float32),
        opacity_logits=rng.normal(0.0, 3.0, n).astype(np.float32),
        log_scales=rng.uniform(-8.0, 0.0, (n, 3)).astype(np.float32),
        rotations=q.astype(np.float32),
        sh_rest=rng.uniform(-0.95, 0.95, (n, k, 3)).astype(np.float32) if k else None)


def rotation_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternions w, x, y, z to matrices (written out independently of the module)."""
    w, x, y, z = (q / np.linalg.norm(q, axis=-1, keepdims=True)).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], axis=-2)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def raw_ply_rows(data: bytes) -> tuple[list[str], np.ndarray]:
    """Property names and float rows of a float-only binary PLY, parsed by hand."""
    head, body = data.split(b"end_header\n", 1)
    names = [line.split()[-1] for line in head.decode().splitlines()
             if line.startswith("property")]
    return names, np.frombuffer(body, "<f4").reshape(-1, len(names))


def raw_spz_positions(data: bytes) -> np.ndarray:
    raw = gzip.decompress(data)
    n = struct.unpack_from("<I", raw, 8)[0]
    b = np.frombuffer(raw, np.uint8, count=9 * n, offset=16).reshape(-1, 3).astype(np.int64)
    fixed = b[:, 0] + (b[:, 1] << 8) + (b[:, 2] << 16)
    return (np.where(fixed >= 1 << 23, fixed - (1 << 24), fixed) / 4096.0).reshape(n, 3)


# -- PLY -----------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [0, 3, 8, 15])
@pytest.mark.parametrize("axes", ["RDF", "RUB"])
def test_ply_round_trip_is_exact(k: int, axes: str) -> None:
    g = random_cloud(k=k)
    back = read_ply(write_ply(g, axes=axes), axes=axes)  # type: ignore[arg-type]
    for name in FIELDS:
        want, got = getattr(g, name), getattr(back, name)
        assert (want is None and got is None) or np.array_equal(want, got), name


def test_ply_header_and_layout_follow_3dgs() -> None:
    g = random_cloud(n=7, k=3)
    names, rows = raw_ply_rows(write_ply(g, axes="RUB"))
    assert names == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2",
                     *(f"f_rest_{i}" for i in range(9)),
                     "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert g.sh_rest is not None
    # f_rest is channel-major: the three red coefficients first
    np.testing.assert_array_equal(rows[:, 9:12], g.sh_rest[:, :, 0])
    np.testing.assert_array_equal(rows[:, 12:15], g.sh_rest[:, :, 1])
    np.testing.assert_array_equal(rows[:, -4:], g.rotations)  # w first
    np.testing.assert_array_equal(rows[:, 3:6], 0.0)


def test_ply_is_rdf_like_niantic_reference() -> None:
    # The expectation of Niantic's own RUB -> RDF test: y and z of positions and of the
    # quaternion's vector part flip.
    q_xyzw = np.array([0.1, 0.2, 0.3, 0.9])
    g = Gaussians(positions=np.array([[1.0, 2.0, 3.0]], np.float32),
                  sh_dc=np.zeros((1, 3), np.float32), opacity_logits=np.zeros(1, np.float32),
                  log_scales=np.full((1, 3), -3.0, np.float32),
                  rotations=np.roll(q_xyzw, 1)[None].astype(np.float32),
                  sh_rest=np.tile(np.arange(1.0, 4.0)[:, None], (1, 1, 3)).astype(np.float32))
    names, rows = raw_ply_rows(write_ply(g))
    row = dict(zip(names, rows[0], strict=True))
    assert [row["x"], row["y"], row["z"]] == pytest.approx([1.0, -2.0, -3.0])
    assert [row[f"rot_{i}"] for i in range(4)] == pytest.approx([0.9, 0.1, -0.2, -0.3])
    # band-1 SH (basis y, z, x) is odd in y and in z: the first two flip, the third stays
    assert [row[f"f_rest_{i}"] for i in range(3)] == pytest.approx([-1.0, -2.0, 3.0])


def test_read_ply_refuses_what_is_not_a_splat() -> None:
    with pytest.raises(InvalidInput):
        read_ply(b"not a ply at all")
    mesh_ply = trimesh.creation.box().export(file_type="ply")
    with pytest.raises(InvalidInput):
        read_ply(mesh_ply)


# -- SPZ -----------------------------------------------------------------------------------

def test_spz_header_and_known_bytes() -> None:
    q_xyzw = np.array([0.1, 0.2, 0.3, 0.9]) / np.sqrt(0.95)
    g = Gaussians(positions=np.array([[1.0, -0.5, 2.0]], np.float32),
                  sh_dc=np.array([[0.0, 1.0, -1.0]], np.float32),
                  opacity_logits=np.zeros(1, np.float32),
                  log_scales=np.array([[-10.0, -4.0, 0.0]], np.float32),
                  rotations=np.roll(q_xyzw, 1)[None].astype(np.float32))
    raw = gzip.decompress(write_spz(g))
    assert struct.unpack_from("<IIIBBBB", raw) == (0x5053474E, 3, 1, 0, 12, 0, 0)
    assert raw[:4] == b"NGSP"
    body = raw[16:]
    assert body[0:9] == bytes([0x00, 0x10, 0x00, 0x00, 0xF8, 0xFF, 0x00, 0x20, 0x00])
    assert body[9] == 128  # round(0.5 * 255)
    assert list(body[10:13]) == [128, round(127.5 + 0.15 * 255), round(127.5 - 0.15 * 255)]
    assert list(body[13:16]) == [0, 96, 160]  # (s + 10) * 16
    # smallest three: largest is w (index 3); x, y, z magnitudes 74, 148, 222 of 511 (by hand)
    comp = ((3 * 1024 + 74) * 1024 + 148) * 1024 + 222
    assert body[16:20] == struct.pack("<I", comp)
    assert len(body) == 20


def test_spz_identity_quaternion_bytes() -> None:
    g = random_cloud(n=1, k=0)
    g.rotations = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    assert gzip.decompress(write_spz(g))[-4:] == bytes([0, 0, 0, 0xC0])


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("k", [0, 3, 15])
def test_spz_round_trip_within_documented_quantisation(version: int, k: int) -> None:
    if version == 4:
        pytest.importorskip("zstandard")
    g = random_cloud(n=2000, k=k, seed=k)
    back = read_spz(write_spz(g, version=version))  # type: ignore[arg-type]
    assert np.abs(back.positions - g.positions).max() <= 0.5 / 4096 + 1e-6
    opacity_error = np.abs(sigmoid(back.opacity_logits) - sigmoid(g.opacity_logits))
    assert opacity_error.max() <= 0.5 / 255 + 1e-6
    assert np.abs(back.sh_dc - g.sh_dc).max() <= 0.5 / (0.15 * 255) + 1e-5
    assert np.abs(back.log_scales - g.log_scales).max() <= 1 / 32 + 1e-5
    same_sign = np.where((back.rotations * g.rotations).sum(1, keepdims=True) < 0, -1.0, 1.0)
    assert np.abs(back.rotations * same_sign - g.rotations).max() <= 3 * 0.5 * np.sqrt(0.5) / 511
    if k:
        assert back.sh_rest is not None and g.sh_rest is not None
        assert np.abs(back.sh_rest[:, :3] - g.sh_rest[:, :3]).max() <= 4.5 / 128 + 1e-6
        assert np.abs(back.sh_rest[:, 3:] - g.sh_rest[:, 3:]).max(initial=0) <= 8.5 / 128 + 1e-6
    else:
        assert back.sh_rest is None


def test_spz_is_much_smaller_than_ply() -> None:
    g = random_cloud(n=5000, k=0)
    g.positions = np.round(g.positions, 2)  # a little structure, like a real scene
    assert len(write_spz(g)) * 2.5 < len(write_ply(g))


def test_spz_refuses_bad_input() -> None:
    with pytest.raises(InvalidInput):
        read_spz(b"\x1f\x8b garbage")
    with pytest.raises(InvalidInput):
        read_spz(gzip.compress(b"XXXX" + bytes(12)))
    far = random_cloud(n=2, k=0)
    far.positions[0, 0] = 3000.0
    with pytest.raises(ExportError):
        write_spz(far)


# -- orientation through both formats ------------------------------------------------------

def asymmetric_cloud() -> Gaussians:
    """A figure: a column up +Y, a nose towards +Z (front), an arm towards +X.

    The nose splat is a needle along +Z; colours mark the parts (red nose, green arm).
    """
    column = np.stack([np.zeros(10), np.linspace(0, 1, 10), np.zeros(10)], 1)
    nose, arm = np.array([[0.0, 0.5, 0.6]]), np.array([[0.5, 0.5, 0.0]])
    pos = np.concatenate([column, nose, arm]).astype(np.float32)
    rgb = np.full((12, 3), 0.5)
    rgb[10], rgb[11] = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    rot = np.tile([1.0, 0.0, 0.0, 0.0], (12, 1))
    rot[10] = [np.sqrt(0.5), 0.0, -np.sqrt(0.5), 0.0]  # -90° about Y: local x -> world +Z
    scales = np.full((12, 3), np.log(0.01))
    scales[10, 0] = np.log(0.2)
    return Gaussians(positions=pos, sh_dc=((rgb - 0.5) / SH_C0).astype(np.float32),
                     opacity_logits=np.full(12, 2.0, np.float32),
                     log_scales=scales.astype(np.float32), rotations=rot.astype(np.float32))


@pytest.mark.parametrize("fmt", ["ply", "spz"])
def test_asymmetric_cloud_keeps_up_and_front(fmt: str) -> None:
    g = asymmetric_cloud()
    back = read_ply(write_ply(g)) if fmt == "ply" else read_spz(write_spz(g))
    top = back.positions[:10, 1].argmax()
    assert back.positions[top, 1] == pytest.approx(1.0, abs=1e-3)  # up stays +Y
    nose = np.argmax(back.sh_dc[:, 0] - back.sh_dc[:, 1])  # the red one
    arm = np.argmax(back.sh_dc[:, 1] - back.sh_dc[:, 0])  # the green one
    assert back.positions[nose] == pytest.approx([0.0, 0.5, 0.6], abs=1e-3)  # front is +Z
    assert back.positions[arm] == pytest.approx([0.5, 0.5, 0.0], abs=1e-3)  # right is +X
    long_axis = rotation_matrix(back.rotations[nose])[:, np.argmax(back.log_scales[nose])]
    assert abs(long_axis[2]) == pytest.approx(1.0, abs=1e-3)
    # the world covariance is the same as the one we wrote
    def cov(h: Gaussians, i: int) -> np.ndarray:
        r = rotation_matrix(h.rotations[i])
        return r @ np.diag(np.exp(2.0 * h.log_scales[i].astype(np.float64))) @ r.T
    np.testing.assert_allclose(cov(back, int(nose)), cov(g, 10), atol=2e-3)


def test_files_store_their_stated_axes() -> None:
    g = asymmetric_cloud()
    names, rows = raw_ply_rows(write_ply(g))
    assert rows[9, names.index("y")] == pytest.approx(-1.0)  # RDF: up is -Y
    assert rows[10, names.index("z")] == pytest.approx(-0.6)  # RDF: front is -Z
    spz = raw_spz_positions(write_spz(g))
    assert spz[9, 1] == pytest.approx(1.0) and spz[10, 2] == pytest.approx(0.6, abs=2e-4)  # RUB


def test_independent_reader_agrees(tmp_path: Path) -> None:
    gsply = pytest.importorskip("gsply")
    g = random_cloud(n=300, k=3)
    (tmp_path / "a.spz").write_bytes(write_spz(g))
    (tmp_path / "a.ply").write_bytes(write_ply(g, axes="RUB"))
    theirs, ours = gsply.read_spz(str(tmp_path / "a.spz")), read_spz(write_spz(g))
    np.testing.assert_allclose(theirs.means, ours.positions, atol=1e-6)
    np.testing.assert_allclose(theirs.quats, ours.rotations, atol=1e-5)
    assert ours.sh_rest is not None
    np.testing.assert_allclose(theirs.shN, ours.sh_rest, atol=1e-6)
    ply = gsply.plyread(str(tmp_path / "a.ply"))
    np.testing.assert_array_equal(ply.means, g.positions)
    np.testing.assert_array_equal(ply.shN, g.sh_rest)


# -- splats from a mesh --------------------------------------------------------------------

def coloured_sphere() -> Mesh:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    v = np.asarray(sphere.vertices, np.float32)
    colors = np.zeros((len(v), 4), np.uint8)
    colors[:, 0] = np.round((v[:, 1] + 0.5) * 255)  # red grows with height
    colors[:, 3] = 255
    return Mesh(v, np.asarray(sphere.faces), colors)


def test_gaussians_from_mesh_lie_on_the_surface_facing_out() -> None:
    mesh = coloured_sphere()
    g = gaussians_from_mesh(mesh, count=4000, seed=3)
    assert len(g) == 4000
    radius = np.linalg.norm(g.positions, axis=1)
    assert radius.min() > 0.48 and radius.max() <= 0.5 + 1e-5
    normal = rotation_matrix(g.rotations)[:, :, 2]  # the thin local axis
    facing = (normal * g.positions / radius[:, None]).sum(1)
    assert facing.min() > 0.95
    assert np.all(g.log_scales[:, 2] < g.log_scales[:, 0])  # flat along the normal
    sigma = np.exp(g.log_scales[0, 0])
    spacing = np.sqrt(4 * np.pi * 0.25 / 4000)
    assert 0.3 * spacing < sigma < spacing
    red = 0.5 + SH_C0 * g.sh_dc[:, 0]
    np.testing.assert_allclose(red, g.positions[:, 1] + 0.5, atol=0.03)
    # area-weighted: as many samples above the equator as below
    assert abs(int((g.positions[:, 1] > 0).sum()) - 2000) < 150


def test_gaussians_from_mesh_is_deterministic_and_survives_spz() -> None:
    mesh = coloured_sphere()
    a = gaussians_from_mesh(mesh, count=500, seed=1)
    b = gaussians_from_mesh(mesh, count=500, seed=1)
    assert np.array_equal(a.positions, b.positions)
    assert not np.array_equal(a.positions, gaussians_from_mesh(mesh, count=500, seed=2).positions)
    back = read_spz(write_spz(a))
    assert np.abs(back.positions - a.positions).max() < 2e-4


def test_gaussians_from_empty_mesh_is_an_engine_error() -> None:
    empty = Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64))
    with pytest.raises(GenerateError):
        gaussians_from_mesh(empty, count=10)
