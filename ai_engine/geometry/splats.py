"""Gaussian splat files: 3DGS PLY and Niantic SPZ, plus splats sampled from a mesh.

Axis conventions (every file states its own; :class:`Gaussians` are always in the
service convention, right-handed X right, Y up, +Z front = towards the viewer, which is
the axis set SPZ calls RUB):

* **SPZ** stores RUB by specification (Niantic's reference library converts to RUB when
  packing), so our Gaussians go in unchanged.
* **3DGS PLY** has no axis metadata; the reference tools (Niantic's ``ply_to_spz``,
  COLMAP-trained 3DGS scenes) treat it as RDF (X right, Y down, Z forward = away from the
  viewer). :func:`write_ply` therefore writes RDF by default: a 180° rotation about X,
  which negates y and z of positions, the y and z parts of the quaternions and the SH
  coefficients odd in y xor z. Scales are local to each Gaussian and do not change.
  ``axes="RUB"`` writes and reads the service axes untouched.

Quantisation of SPZ (it is lossy, never lossless), as packed by :func:`write_spz`, with the
largest error a value can take on the way back through :func:`read_spz`:

* positions: 24-bit fixed point with 12 fractional bits, ±0.5/4096 ≈ 1.2e-4 (|x| < 2048);
* opacity: ``round(sigmoid(logit) * 255)``, ±0.5/255 in opacity (the logit comes back
  finite: 0 and 255 decode to opacity 0.5/255 and 1 - 0.5/255);
* SH DC: ``round(dc * 0.15 * 255 + 127.5)``, ±0.5/(0.15·255) ≈ 0.0131 inside ±3.33;
* log scales: ``round((s + 10) * 16)``, ±1/32 inside [-10, 5.94];
* rotations (version 3 and 4, "smallest three"): the three smallest components of the
  unit quaternion in 9 bits plus sign, ±0.5·(1/√2)/511 ≈ 6.9e-4 each; the largest one,
  rebuilt from the unit norm, within three times that;
* SH rest: 8 bits over [-1, 1) rounded to buckets of 5 bits (degree 1) and 4 bits (higher),
  ±4.5/128 and ±8.5/128 inside the range.

Why our own codec rather than a package: ``gsply`` (PyPI) packs SPZ v3 correctly, but it
reads and writes file paths only (our exporters work in memory and leave no temporary
files), never converts axes, and needs numba at import; the codec is a few vectorised
numpy lines following Niantic's ``load-spz.cc``. The tests read our files with ``gsply``
where it is installed, as an independent check.
"""

from __future__ import annotations

import gzip
import itertools
import math
import struct
from typing import Literal

import numpy as np
import numpy.typing as npt

from ai_engine.errors import ExportError, GenerateError, InvalidInput
from ai_engine.geometry.types import Gaussians, Mesh

Axes = Literal["RDF", "RUB"]

SH_C0 = 0.28209479177387814  # degree-0 real spherical harmonic; colour = 0.5 + SH_C0 * dc
SPZ_MAGIC = 0x5053474E  # "NGSP" little endian
SPZ_FRACTIONAL_BITS = 12
SPZ_COLOR_SCALE = 0.15
_SQRT1_2 = 0.7071067811865476
_SH_DIMS = {0: 0, 3: 1, 8: 2, 15: 3, 24: 4}  # rest coefficients per channel -> degree
_SH1_BITS, _SH_REST_BITS = 5, 4  # Niantic's default SH quantisation
_ZSTD_LEVEL = 12


# -- axes --------------------------------------------------------------------------------

def _sh_parity(count: int, sx: float, sy: float, sz: float) -> npt.NDArray[np.float32]:
    """Sign each real SH basis function (bands 1..4, standard order) takes under an axis flip."""
    x, y, z = sx, sy, sz
    signs = [y, z, x,  # band 1: y, z, x
             x * y, y * z, 1.0, x * z, 1.0,  # band 2: xy, yz, 3z²-1, xz, x²-y²
             y, x * y * z, y, z, x, z, x,  # band 3
             x * y, y * z, x * y, y * z, 1.0, x * z, 1.0, x * z, 1.0]  # band 4
    return np.asarray(signs[:count], np.float32)


def _flip_yz(g: Gaussians) -> Gaussians:
    """Rotate the cloud 180° about X (RUB <-> RDF; the map is its own inverse)."""
    pos = g.positions * np.array([1.0, -1.0, -1.0], np.float32)
    rot = g.rotations * np.array([1.0, 1.0, -1.0, -1.0], np.float32)  # w, x, y, z
    rest = None
    if g.sh_rest is not None:
        rest = g.sh_rest * _sh_parity(g.sh_rest.shape[1], 1.0, -1.0, -1.0)[None, :, None]
    return Gaussians(pos, g.sh_dc, g.opacity_logits, g.log_scales, rot, rest)


def _checked(g: Gaussians) -> Gaussians:
    """Coerce to contiguous float32 and check the shapes agree; raises ExportError."""
    n = len(g.positions)
    f32 = np.float32
    out = Gaussians(
        positions=np.ascontiguousarray(g.positions, f32).reshape(n, 3),
        sh_dc=np.ascontiguousarray(g.sh_dc, f32).reshape(n, 3),
        opacity_logits=np.ascontiguousarray(g.opacity_logits, f32).reshape(n),
        log_scales=np.ascontiguousarray(g.log_scales, f32).reshape(n, 3),
        rotations=np.ascontiguousarray(g.rotations, f32).reshape(n, 4),
        sh_rest=None if g.sh_rest is None or g.sh_rest.size == 0
        else np.ascontiguousarray(g.sh_rest, f32).reshape(n, -1, 3),
    )
    if out.sh_rest is not None and out.sh_rest.shape[1] not in _SH_DIMS:
        raise ExportError(f"sh_rest has {out.sh_rest.shape[1]} coefficients per channel; "
                          "expected 3, 8, 15 or 24", code="export.invalid_gaussians")
    if not all(np.isfinite(a).all() for a in (out.positions, out.sh_dc, out.log_scales,
                                              out.rotations)):
        raise ExportError("Gaussians hold NaN or infinite values",
                          code="export.invalid_gaussians")
    return out


# -- 3DGS PLY ----------------------------------------------------------------------------

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2",
              "int16": "i2", "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4",
              "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4",
              "double": "f8", "float64": "f8"}


def write_ply(g: Gaussians, *, axes: Axes = "RDF") -> bytes:
    """Encode Gaussians as a binary little-endian 3DGS PLY (float32, exact).

    Properties ``x y z nx ny nz f_dc_0..2 f_rest_0.. opacity scale_0..2 rot_0..3``; normals
    are zero, ``f_rest`` is channel-major (all red coefficients, then green, then blue),
    ``rot`` is ``w x y z``. ``axes`` is the file's convention (module docstring).
    """
    g = _checked(g)
    if axes == "RDF":
        g = _flip_yz(g)
    n = len(g)
    rest = g.sh_rest if g.sh_rest is not None else np.zeros((n, 0, 3), np.float32)
    columns = [g.positions, np.zeros((n, 3), np.float32), g.sh_dc,
               rest.transpose(0, 2, 1).reshape(n, -1), g.opacity_logits[:, None],
               g.log_scales, g.rotations]
    body = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype="<f4")
    names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
             + [f"f_rest_{i}" for i in range(rest.shape[1] * 3)]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    header = ["ply", "format binary_little_endian 1.0", f"comment axes {axes}",
              f"element vertex {n}", *(f"property float {name}" for name in names),
              "end_header"]
    return ("\n".join(header) + "\n").encode("ascii") + body.tobytes()


def _parse_ply_header(data: bytes) -> tuple[int, str, list[tuple[str, int, list[tuple[str, str]]]]]:
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise InvalidInput("not a PLY file", code="input.invalid_splat")
    body_start = data.index(b"\n", end) + 1
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    fmt = ""
    for line in data[:end].decode("ascii", "replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            if words[1] == "list":  # only legal after the vertex block, which we stop at
                elements[-1][2].append((words[-1], "list"))
            else:
                elements[-1][2].append((words[-1], _PLY_TYPES.get(words[1], "?")))
    return body_start, fmt, elements


def read_ply(data: bytes, *, axes: Axes = "RDF") -> Gaussians:
    """Decode a binary 3DGS PLY (as :func:`write_ply` and 3DGS trainers write it).

    ``axes`` is the file's convention; the result is in the service convention. Values
    come back bit-exact. Raises :class:`InvalidInput` for anything else.
    """
    offset, fmt, elements = _parse_ply_header(data)
    order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fmt)
    if order is None:
        raise InvalidInput(f"unsupported PLY format {fmt!r}", code="input.invalid_splat")
    for name, count, props in elements:
        if any(kind in ("list", "?") for _, kind in props):
            raise InvalidInput(f"PLY element {name!r} has unsupported properties",
                               code="input.invalid_splat")
        dtype = np.dtype([(prop, order + kind) for prop, kind in props])
        if name == "vertex":
            rows = np.frombuffer(data, dtype, count=count, offset=offset)
            break
        offset += dtype.itemsize * count
    else:
        raise InvalidInput("PLY has no vertex element", code="input.invalid_splat")
    fields = set(rows.dtype.names or ())
    needed = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
              "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [name for name in needed if name not in fields]
    if missing:
        raise InvalidInput(f"PLY lacks Gaussian properties {missing}", code="input.invalid_splat")

    def stack(names: list[str]) -> npt.NDArray[np.float32]:
        return np.stack([rows[name].astype(np.float32) for name in names], axis=1)

    n_rest = sum(1 for name in fields if name.startswith("f_rest_"))
    if n_rest % 3 or n_rest // 3 not in _SH_DIMS:
        raise InvalidInput(f"PLY has {n_rest} f_rest properties", code="input.invalid_splat")
    rest = None
    if n_rest:
        flat = stack([f"f_rest_{i}" for i in range(n_rest)])
        rest = np.ascontiguousarray(flat.reshape(count, 3, n_rest // 3).transpose(0, 2, 1))
    g = Gaussians(positions=stack(["x", "y", "z"]), sh_dc=stack(["f_dc_0", "f_dc_1", "f_dc_2"]),
                  opacity_logits=rows["opacity"].astype(np.float32),
                  log_scales=stack(["scale_0", "scale_1", "scale_2"]),
                  rotations=stack(["rot_0", "rot_1", "rot_2", "rot_3"]), sh_rest=rest)
    return _flip_yz(g) if axes == "RDF" else g


# -- SPZ ---------------------------------------------------------------------------------

def _pack_smallest_three(rot_wxyz: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Quaternions to SPZ v3 "smallest three": 2-bit index of the largest of x, y, z, w and
    the other three as sign + 9-bit magnitude over [0, 1/√2], first component in the high bits."""
    q = np.roll(rot_wxyz.astype(np.float64), -1, axis=1)  # SPZ orders x, y, z, w
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    largest = np.argmax(np.abs(q), axis=1)
    rows = np.arange(len(q))
    q *= np.where(q[rows, largest] < 0, -1.0, 1.0)[:, None]  # -q is the same rotation
    comp = largest.astype(np.uint32)
    for i in range(4):
        mag = np.minimum(np.floor(511.0 * np.abs(q[:, i]) / _SQRT1_2 + 0.5), 511).astype(np.uint32)
        field = ((q[:, i] < 0).astype(np.uint32) << 9) | mag
        comp = np.where(largest == i, comp, (comp << 10) | field)
    return comp.astype("<u4").view(np.uint8).reshape(-1, 4)


def _unpack_smallest_three(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    comp = packed.reshape(-1, 4).copy().view("<u4")[:, 0].astype(np.uint32)
    largest = comp >> 30
    q = np.zeros((len(comp), 4), np.float64)
    for i in range(3, -1, -1):
        here = largest != i
        value = _SQRT1_2 * (comp & 511) / 511.0 * np.where((comp >> 9) & 1, -1.0, 1.0)
        q[:, i] = np.where(here, value, 0.0)
        comp = np.where(here, comp >> 10, comp)
    rows = np.arange(len(q))
    q[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - (q * q).sum(axis=1)))
    return np.roll(q, 1, axis=1).astype(np.float32)  # back to w, x, y, z


def _quantize_sh(values: npt.NDArray[np.float32], bits: int) -> npt.NDArray[np.uint8]:
    bucket = 1 << (8 - bits)
    q = np.round(values.astype(np.float32) * 128.0) + 128.0
    q = np.floor((q + bucket // 2) / bucket) * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def _spz_streams(g: Gaussians) -> list[bytes]:
    """The six attribute streams of SPZ v3/v4, in file order."""
    n = len(g)
    fixed = np.round(g.positions.astype(np.float64) * (1 << SPZ_FRACTIONAL_BITS))
    if np.abs(fixed).max(initial=0) >= 1 << 23:
        raise ExportError("a position is beyond SPZ's 24-bit range (|x| < 2048)",
                          code="export.invalid_gaussians")
    positions = fixed.astype("<i4").view(np.uint8).reshape(n, 3, 4)[:, :, :3]
    opacity = 1.0 / (1.0 + np.exp(-g.opacity_logits.astype(np.float64)))
    alphas = np.clip(np.round(opacity * 255.0), 0, 255).astype(np.uint8)
    colors = np.clip(np.round(g.sh_dc * (SPZ_COLOR_SCALE * 255.0) + 127.5), 0, 255)
    scales = np.clip(np.round((g.log_scales + 10.0) * 16.0), 0, 255)
    sh = b""
    if g.sh_rest is not None:  # coefficient-major, channel inner: [N, K, 3] as stored
        sh = np.concatenate([_quantize_sh(g.sh_rest[:, :3], _SH1_BITS),
                             _quantize_sh(g.sh_rest[:, 3:], _SH_REST_BITS)], axis=1).tobytes()
    return [positions.tobytes(), alphas.tobytes(), colors.astype(np.uint8).tobytes(),
            scales.astype(np.uint8).tobytes(), _pack_smallest_three(g.rotations).tobytes(), sh]


def write_spz(g: Gaussians, *, version: Literal[3, 4] = 3, antialiased: bool = False) -> bytes:
    """Encode Gaussians as Niantic SPZ (lossy; RUB axes, i.e. the service axes unchanged).

    ``version=3`` (default) is the gzip container every common viewer reads: a 16-byte
    header (magic, version, numPoints, shDegree, fractionalBits, flags, reserved) and the
    attribute streams, gzipped together. ``version=4`` is Niantic's newer container (32-byte
    plain header, a table of contents and one zstd stream per attribute) and needs the
    ``zstandard`` package. ``antialiased`` sets the mip-splatting flag.
    """
    g = _checked(g)
    n, k = len(g), 0 if g.sh_rest is None else g.sh_rest.shape[1]
    streams = _spz_streams(g)
    flags = 1 if antialiased else 0
    if version == 3:
        header = struct.pack("<IIIBBBB", SPZ_MAGIC, 3, n, _SH_DIMS[k], SPZ_FRACTIONAL_BITS,
                             flags, 0)
        return gzip.compress(header + b"".join(streams), compresslevel=6, mtime=0)
    if version != 4:
        raise ExportError(f"SPZ version {version} is not written", code="export.invalid_option")
    try:
        import zstandard
    except ImportError as exc:
        raise ExportError("SPZ version 4 needs the zstandard package",
                          code="export.missing_dependency") from exc
    compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    chunks = [(compressor.compress(s), len(s)) for s in streams if s]
    header = struct.pack("<IIIBBBBI12x", SPZ_MAGIC, 4, n, _SH_DIMS[k], SPZ_FRACTIONAL_BITS,
                         flags, len(chunks), 32)
    toc = b"".join(struct.pack("<QQ", len(c), size) for c, size in chunks)
    return header + toc + b"".join(c for c, _ in chunks)


def _spz_sections(data: bytes) -> tuple[int, int, int, int, list[bytes]]:
    """Split an SPZ file into (version, count, shDegree, fractionalBits, six streams)."""
    bad = InvalidInput("not a readable SPZ file", code="input.invalid_splat")
    if data[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise bad from exc
        magic, version, n, degree, frac, _flags, _ = struct.unpack_from("<IIIBBBB", raw)
        if magic != SPZ_MAGIC or not 1 <= version <= 3 or degree > 4:
            raise bad
        k = [0, 3, 8, 15, 24][degree]
        sizes = [n * (6 if version == 1 else 9), n, 3 * n, 3 * n, n * (4 if version >= 3 else 3),
                 n * k * 3]
        if len(raw) < 16 + sum(sizes):
            raise bad
        bounds = np.cumsum([16, *sizes])
        return version, n, degree, frac, [raw[a:b] for a, b in itertools.pairwise(bounds)]
    if len(data) < 32:
        raise bad
    magic, version, n, degree, frac, _flags, count, toc_at = struct.unpack_from("<IIIBBBBI", data)
    if magic != SPZ_MAGIC or version != 4 or degree > 4:
        raise bad
    import zstandard  # only the v4 container needs it

    decompressor = zstandard.ZstdDecompressor()
    at, streams = toc_at + 16 * count, []
    for i in range(count):
        size, full = struct.unpack_from("<QQ", data, toc_at + 16 * i)
        streams.append(decompressor.decompress(data[at:at + size], max_output_size=full))
        at += size
    return version, n, degree, frac, [*streams, b""][:6]


def read_spz(data: bytes) -> Gaussians:
    """Decode an SPZ file (versions 1-3 in gzip, version 4 in zstd) into service axes.

    Values come back within the quantisation bounds in the module docstring.
    """
    version, n, degree, frac, (pos, alpha, color, scale, rot, sh) = _spz_sections(data)
    if version == 1:
        positions: npt.NDArray[np.float32] = np.frombuffer(pos, "<f2").astype(np.float32)
        positions = positions.reshape(n, 3)
    else:
        b = np.frombuffer(pos, np.uint8).reshape(n * 3, 3).astype(np.int32)
        fixed = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
        positions = (fixed / (1 << frac)).astype(np.float32).reshape(n, 3)
    opacity = np.clip(np.frombuffer(alpha, np.uint8) / 255.0, 0.5 / 255, 1 - 0.5 / 255)
    if version >= 3:
        rotations = _unpack_smallest_three(np.frombuffer(rot, np.uint8))
    else:  # x, y, z in 8 bits, w >= 0 implied
        xyz = np.frombuffer(rot, np.uint8).reshape(n, 3) / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - (xyz * xyz).sum(axis=1)))
        rotations = np.concatenate([w[:, None], xyz], axis=1).astype(np.float32)
    k = [0, 3, 8, 15, 24][degree]
    rest = None
    if k:
        rest = ((np.frombuffer(sh, np.uint8).astype(np.float32) - 128.0) / 128.0).reshape(n, k, 3)
    return Gaussians(
        positions=positions,
        sh_dc=((np.frombuffer(color, np.uint8).reshape(n, 3) / 255.0 - 0.5)
               / SPZ_COLOR_SCALE).astype(np.float32),
        opacity_logits=np.log(opacity / (1.0 - opacity)).astype(np.float32),
        log_scales=(np.frombuffer(scale, np.uint8).reshape(n, 3) / 16.0 - 10.0).astype(np.float32),
        rotations=rotations, sh_rest=rest)


# -- splats from a mesh ------------------------------------------------------------------

def _quat_from_matrix(m: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Rotation matrices [N, 3, 3] to unit quaternions w, x, y, z (largest-pivot method)."""
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    pivots = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22,
                       1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=1)
    d21, d02, d10 = m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]
    s01, s02, s12 = m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1]
    candidates = np.stack([np.stack([pivots[:, 0], d21, d02, d10], 1),
                           np.stack([d21, pivots[:, 1], s01, s02], 1),
                           np.stack([d02, s01, pivots[:, 2], s12], 1),
                           np.stack([d10, s02, s12, pivots[:, 3]], 1)], axis=1)
    q = candidates[np.arange(len(m)), np.argmax(pivots, axis=1)]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return (q * np.where(q[:, :1] < 0, -1.0, 1.0)).astype(np.float32)


def gaussians_from_mesh(mesh: Mesh, *, count: int, seed: int = 0,
                        opacity: float = 0.95, thickness: float = 0.1) -> Gaussians:
    """Sample ``count`` flat Gaussians on the surface of ``mesh``, area-weighted.

    Each splat lies in its face's plane (local z along the outward normal, local x along
    the face's first edge), with tangent sigma 0.6x the mean sample spacing
    ``sqrt(area / count)`` so neighbours overlap, and ``thickness`` times that along the
    normal. Colours are the barycentric blend of the vertex colours (mid grey without).
    Deterministic for a given ``seed``. Raises GenerateError for a mesh without area.
    """
    if count <= 0:
        raise InvalidInput("count must be positive", code="input.invalid")
    v = mesh.vertices.astype(np.float64)
    tri = v[mesh.faces] if not mesh.is_empty else np.zeros((0, 3, 3))
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    doubled_area = np.linalg.norm(cross, axis=1)
    total = float(doubled_area.sum()) / 2.0
    if not total > 0.0:
        raise GenerateError("mesh has no surface to sample", code="generate.empty_mesh")
    rng = np.random.default_rng(seed)
    # 1. faces by area, then uniform barycentric points (square-root warp)
    face = rng.choice(len(tri), size=count, p=doubled_area / doubled_area.sum())
    r1, r2 = np.sqrt(rng.random(count)), rng.random(count)
    bary = np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=1)
    positions = np.einsum("nk,nkd->nd", bary, tri[face])
    # 2. colour from the vertex colours
    if mesh.colors is not None:
        rgb = np.einsum("nk,nkc->nc", bary, mesh.colors[mesh.faces[face], :3] / 255.0)
    else:
        rgb = np.full((count, 3), 0.5)
    # 3. orientation: columns (edge, normal x edge, normal) map local to world axes
    normal = cross[face] / doubled_area[face, None]
    edge = tri[face, 1] - tri[face, 0]
    edge /= np.maximum(np.linalg.norm(edge, axis=1, keepdims=True), 1e-12)
    frame = np.stack([edge, np.cross(normal, edge), normal], axis=2)
    sigma = 0.6 * math.sqrt(total / count)
    log_scales = np.log(np.array([sigma, sigma, sigma * thickness]))
    return Gaussians(
        positions=positions.astype(np.float32),
        sh_dc=((rgb - 0.5) / SH_C0).astype(np.float32),
        opacity_logits=np.full(count, math.log(opacity / (1.0 - opacity)), np.float32),
        log_scales=np.tile(log_scales, (count, 1)).astype(np.float32),
        rotations=_quat_from_matrix(frame))
