"""Value types every generator hands to the geometry engine.

Coordinates follow the service convention for every output: right-handed,
Y up, the object facing +Z (seen from +Z the asset looks like the input
image: image right is +X, image top is +Y), fitted to the unit cube
``[-0.5, 0.5]^3`` by the exporters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
ByteArray = npt.NDArray[np.uint8]


@dataclass
class Mesh:
    """A triangle mesh with optional per-vertex RGBA colours.

    ``vertices`` float32 ``[V, 3]``; ``faces`` int64 ``[F, 3]`` wound
    counter-clockwise seen from outside; ``colors`` uint8 ``[V, 4]`` or None.
    """

    vertices: FloatArray
    faces: IntArray
    colors: ByteArray | None = None

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32).reshape(-1, 3)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64).reshape(-1, 3)
        if self.colors is not None:
            colors = np.asarray(self.colors)
            if colors.dtype != np.uint8:
                colors = np.clip(np.rint(colors * 255.0 if colors.max() <= 1.0 else colors),
                                 0, 255).astype(np.uint8)
            if colors.shape[1] == 3:
                colors = np.concatenate(
                    [colors, np.full((len(colors), 1), 255, np.uint8)], axis=1)
            self.colors = np.ascontiguousarray(colors)

    @property
    def is_empty(self) -> bool:
        return len(self.vertices) == 0 or len(self.faces) == 0


@dataclass
class Gaussians:
    """A 3D Gaussian splat cloud in the service convention (Y up, +Z front).

    ``positions`` ``[N, 3]``; ``sh_dc`` ``[N, 3]`` (degree-0 spherical harmonic
    coefficients, colour = 0.5 + C0 * sh_dc); ``sh_rest`` ``[N, K, 3]`` or None;
    ``opacity_logits`` ``[N]`` (opacity = sigmoid); ``log_scales`` ``[N, 3]``;
    ``rotations`` ``[N, 4]`` unit quaternions in ``w, x, y, z`` order.
    All float32.
    """

    positions: FloatArray
    sh_dc: FloatArray
    opacity_logits: FloatArray
    log_scales: FloatArray
    rotations: FloatArray
    sh_rest: FloatArray | None = None

    def __len__(self) -> int:
        return int(self.positions.shape[0])
