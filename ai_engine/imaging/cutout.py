"""Background removal without model weights.

An image that already carries a meaningful alpha channel is taken as cut out.
Otherwise the background is assumed to be what touches the frame's border, and
plain-ish (one to a few colours, some texture):

1. work on a copy at most ``work_side`` pixels on its long side, in CIE Lab, lightly blurred;
2. cluster the border strip's colours (k-means) and keep the clusters that are a
   real share of the border: those are the background colours;
3. distance of every pixel to its nearest background colour, scaled by that
   colour's own spread (so a textured table tolerates more than a flat wall);
4. threshold the distance (Otsu, never below a floor); background = the
   below-threshold region connected to the border, so bright parts inside the
   object are kept (hole filling);
5. keep the largest component and the ones at least a fraction of its size,
   open/close morphologically, fill holes;
6. upsample the mask, soften the edge by about a pixel at full resolution.

Learned removal (:mod:`ai_engine.imaging.segment`) plugs in through
``cut_out(rgba, segmenter=...)``; this module stays the fallback when no weights exist.

Errors: ``ImagingError`` ``imaging.no_object`` when the mask is empty or covers
nearly the whole frame.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage
from scipy.cluster.vq import kmeans2
from skimage.color import rgb2lab
from skimage.filters import threshold_otsu

from ai_engine.errors import ImagingError
from ai_engine.imaging.decode import RGBA, has_meaningful_alpha

if TYPE_CHECKING:
    from ai_engine.imaging.segment import Segmenter

logger = logging.getLogger(__name__)

Method = Literal["alpha", "classical", "rembg", "transformers"]
"""How a cut-out was made: the image's own alpha, or which background removal ran."""
FloatArray = npt.NDArray[np.float32]

# A mask is "no object" below/above these shares of the frame.
MIN_OBJECT_FRACTION = 0.002
MAX_OBJECT_FRACTION = 0.97
# Colour distance (in spreads of the background cluster, see _distance_map) under
# which a pixel always counts as background, whatever Otsu says.
_MIN_THRESHOLD = 3.0
_BORDER_CLUSTERS = 4
# Lab units: spread floor and cap of a background colour cluster.
_MIN_SPREAD = 2.0
_MAX_SPREAD = 12.0
_MIN_CLUSTER_SHARE = 0.08
_MIN_SIDE_SHARE = 0.10
# Components at least this share of the largest one are kept beside it.
_KEEP_COMPONENT_SHARE = 0.15


def cut_out(rgba: RGBA, *, work_side: int = 512,
            segmenter: Segmenter | None = None) -> tuple[RGBA, Method]:
    """Return a straight-alpha RGBA cut-out of ``rgba`` and the method that made it.

    A meaningful alpha is used as is, unless it marks nearly nothing as
    transparent (rounded corners, a transparent frame line): then background
    removal runs and its mask is intersected with the given alpha. Removal is
    ``segmenter`` when given (a learned model), else the classical one.
    """
    if alpha_is_cutout(rgba):
        logger.info("cut-out: using the image's own alpha (%.1f%% of the frame)",
                    100 * float(np.mean(rgba[..., 3] >= 128)))
        return rgba, "alpha"
    if segmenter is not None:
        return segmenter(rgba), segmenter.method
    logger.info("cut-out: classical background removal")
    return remove_background(rgba, work_side=work_side), "classical"


def alpha_is_cutout(rgba: RGBA) -> bool:
    """Whether ``rgba``'s own alpha channel already is a cut-out (so removal is skipped).

    Raises ``imaging.no_object`` for a fully transparent image.
    """
    if not has_meaningful_alpha(rgba):
        return False
    coverage = float(np.mean(rgba[..., 3] >= 128))
    if coverage < MIN_OBJECT_FRACTION:
        raise ImagingError("the image is fully transparent", code="imaging.no_object")
    return coverage <= MAX_OBJECT_FRACTION


def check_coverage(mask: npt.NDArray[np.bool_]) -> None:
    """Refuse a mask that is empty or covers nearly the whole frame (``imaging.no_object``)."""
    fraction = float(mask.mean()) if mask.size else 0.0
    if fraction < MIN_OBJECT_FRACTION or fraction > MAX_OBJECT_FRACTION:
        raise ImagingError(
            f"no object stands out from the background (mask covers {100 * fraction:.1f}%)",
            code="imaging.no_object")


def remove_background(rgba: RGBA, *, work_side: int = 512) -> RGBA:
    """Estimate the background from the border and return RGBA with the object's alpha."""
    height, width = rgba.shape[:2]
    # 1. small Lab copy
    small = _downscale(rgba, work_side=work_side)
    lab = rgb2lab(small[..., :3]).astype(np.float32)
    lab = ndimage.gaussian_filter(lab, sigma=(1.0, 1.0, 0.0))
    given_alpha = small[..., 3] >= 128
    # 2.-3. background colours and distance to them
    distance = _distance_map(lab, usable=given_alpha)
    # 4.-5. threshold, border-connected background, components, clean-up
    mask = _object_mask(distance) & given_alpha
    check_coverage(mask)
    # 6. full-resolution soft alpha
    alpha = _soft_alpha(mask, height=height, width=width)
    out = rgba.copy()
    out[..., 3] = np.minimum(alpha, rgba[..., 3])
    return out


def _downscale(rgba: RGBA, *, work_side: int) -> RGBA:
    height, width = rgba.shape[:2]
    scale = work_side / max(height, width)
    if scale >= 1.0:
        return rgba
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # BOX is an area average: the right filter for a large reduction, and fast.
    small = Image.fromarray(rgba, "RGBA").resize(size, Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def _border_pixels(values: FloatArray, usable: npt.NDArray[np.bool_]
                   ) -> tuple[FloatArray, npt.NDArray[np.intp]]:
    """The pixels of a strip along each side (corners count for both sides), and
    which side (0-3) each came from."""
    height, width = values.shape[:2]
    strip = max(2, round(0.03 * min(height, width)))
    sides = [(slice(0, strip), slice(None)), (slice(height - strip, None), slice(None)),
             (slice(None), slice(0, strip)), (slice(None), slice(width - strip, None))]
    samples, side_ids = [], []
    for side, (rows, cols) in enumerate(sides):
        pixels = values[rows, cols][usable[rows, cols]]
        samples.append(pixels)
        side_ids.append(np.full(len(pixels), side, dtype=np.intp))
    return np.concatenate(samples), np.concatenate(side_ids)


def _distance_map(lab: FloatArray, *, usable: npt.NDArray[np.bool_]) -> FloatArray:
    """Per pixel, distance to the nearest background colour in units of its spread."""
    samples, side_ids = _border_pixels(lab, usable)
    if len(samples) == 0:
        return np.zeros(lab.shape[:2], dtype=np.float32)
    clusters = min(_BORDER_CLUSTERS, len(samples))
    # Fixed seed: the same image always gives the same mask.
    _, labels = kmeans2(samples.astype(np.float64), clusters, seed=0, minit="++")
    background = _background_clusters(labels, side_ids, clusters=clusters)
    distance = np.full(lab.shape[:2], np.inf, dtype=np.float32)
    pixels = lab.reshape(-1, 3)
    for k in range(clusters):
        if k not in background:
            continue
        members = samples[labels == k]
        centre = np.median(members, axis=0)
        # Mahalanobis distance: a wooden table varies mostly in lightness along its
        # grain, so a change of hue or chroma must count for more than the same
        # change of lightness. The floor keeps a flat background from turning
        # invisible noise into "object"; the cap keeps a busy border from
        # swallowing everything.
        covariance = np.cov(members, rowvar=False) + np.eye(3) * _MIN_SPREAD**2
        eigval, eigvec = np.linalg.eigh(covariance)
        eigval = np.minimum(eigval, _MAX_SPREAD**2)
        whiten = (eigvec / np.sqrt(eigval)).astype(np.float32)
        diff = pixels - centre.astype(np.float32)
        # Written out rather than "diff @ whiten": a 3x3 product does not need BLAS,
        # whose threads stall when the CPU is shared with other work.
        projected = (diff[:, 0:1] * whiten[0] + diff[:, 1:2] * whiten[1]
                     + diff[:, 2:3] * whiten[2])
        d = np.sqrt(np.sum(projected * projected, axis=1))
        distance = np.minimum(distance, d.reshape(lab.shape[:2]))
    return distance


def _background_clusters(labels: npt.NDArray[np.int32], side_ids: npt.NDArray[np.intp], *,
                         clusters: int) -> set[int]:
    """The border colour clusters that are background.

    A cluster must be a real share of the border and appear along at least two
    sides: an object cut by the frame's edge (a product standing on the bottom
    edge) shows its colour along one side only. If no cluster qualifies, the
    largest one is the background.
    """
    counts = np.bincount(labels, minlength=clusters)
    per_side = np.stack([np.bincount(labels[side_ids == side], minlength=clusters)
                         / max(1, int(np.sum(side_ids == side))) for side in range(4)])
    chosen = {k for k in range(clusters)
              if counts[k] >= _MIN_CLUSTER_SHARE * len(labels)
              and int(np.sum(per_side[:, k] >= _MIN_SIDE_SHARE)) >= 2}
    return chosen or {int(np.argmax(counts))}


def _object_mask(distance: FloatArray) -> npt.NDArray[np.bool_]:
    finite = distance[np.isfinite(distance)]
    if finite.size == 0 or float(finite.max()) <= _MIN_THRESHOLD:
        return np.zeros(distance.shape, dtype=bool)
    threshold = max(float(threshold_otsu(np.minimum(finite, 50.0))), _MIN_THRESHOLD)
    candidate_bg = distance < threshold
    # Background = low-distance pixels connected to the border; everything else,
    # including background-coloured pixels enclosed by the object, is object.
    labels, _ = ndimage.label(candidate_bg)
    edge_labels = np.unique(np.concatenate(
        [labels[0, :], labels[-1, :], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, edge_labels[edge_labels > 0])
    mask = ~background
    side = max(distance.shape)
    radius = max(1, round(side / 256))
    structure = _disk(radius)
    mask = ndimage.binary_opening(mask, structure=structure)
    mask = _keep_main_components(mask)
    mask = ndimage.binary_closing(mask, structure=structure, border_value=0)
    return np.asarray(ndimage.binary_fill_holes(mask), dtype=bool)


def _keep_main_components(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= _KEEP_COMPONENT_SHARE * sizes.max()) + 1
    return np.isin(labels, keep)


def _soft_alpha(mask: npt.NDArray[np.bool_], *, height: int, width: int
                ) -> npt.NDArray[np.uint8]:
    """Upsample a binary mask to ``height x width`` with an edge about 1.5 px wide."""
    soft = ndimage.gaussian_filter(mask.astype(np.float32), sigma=0.7)
    if soft.shape != (height, width):
        soft = np.asarray(Image.fromarray(soft, "F").resize(
            (width, height), Image.Resampling.BILINEAR), dtype=np.float32)
        scale = max(height / mask.shape[0], width / mask.shape[1])
        # Bilinear upsampling stretches the edge ramp by the scale; steepen it back.
        soft = np.clip((soft - 0.5) * scale + 0.5, 0.0, 1.0)
    return np.asarray(np.rint(soft * 255.0), dtype=np.uint8)


def _disk(radius: int) -> npt.NDArray[np.bool_]:
    grid = np.arange(-radius, radius + 1)
    return np.asarray((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius ** 2 + radius)
