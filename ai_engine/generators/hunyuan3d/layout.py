"""Where Hunyuan3D-2 weights live under ``MODELS_DIR`` (no torch needed).

Two layouts are read, for each variant:

* **official folder**, as published (``tencent/Hunyuan3D-2``, ``-2mini``):
  ``<root>/hunyuan3d-dit-v2-0/config.yaml`` + ``model.fp16.safetensors`` (or
  ``model.safetensors``, ``model.fp16.ckpt``, ``model.ckpt``), the one file
  holding the DiT (keys ``model.*``), the ShapeVAE (``vae.*``) and the image
  encoder (``conditioner.*``). A VAE folder beside it
  (``hunyuan3d-vae-v2-0/config.yaml`` + ``model.fp16.safetensors``, plain keys)
  supplies the VAE when the DiT file has none; the turbo variant prefers the
  FlashVDM decoder in ``hunyuan3d-vae-v2-0-turbo``.
* **combined file**: ``<root>/hunyuan3d-dit-v2-0.safetensors`` with the same
  prefixed keys and its config beside it as ``hunyuan3d-dit-v2-0.yaml``.

``<root>`` is ``MODELS_DIR`` itself, or ``MODELS_DIR/Hunyuan3D-2`` (``-2mini``
for mini), optionally under ``tencent/`` (a Hub snapshot copied as is).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Variant = Literal["v2-0", "mini", "turbo", "fast"]
VARIANTS: tuple[Variant, ...] = ("v2-0", "fast", "turbo", "mini")

WEIGHT_FILES = ("model.fp16.safetensors", "model.safetensors", "model.fp16.ckpt", "model.ckpt")


@dataclass(frozen=True)
class VariantSpec:
    dit: str
    """Folder (and combined-file stem) of the DiT."""
    vae: str
    """Folder of the VAE this variant is decoded with by preference."""
    repo: str
    """Hub repository the official folders come from (a folder name under MODELS_DIR)."""


SPECS: dict[Variant, VariantSpec] = {
    "v2-0": VariantSpec("hunyuan3d-dit-v2-0", "hunyuan3d-vae-v2-0", "Hunyuan3D-2"),
    "fast": VariantSpec("hunyuan3d-dit-v2-0-fast", "hunyuan3d-vae-v2-0", "Hunyuan3D-2"),
    "turbo": VariantSpec("hunyuan3d-dit-v2-0-turbo", "hunyuan3d-vae-v2-0-turbo", "Hunyuan3D-2"),
    "mini": VariantSpec("hunyuan3d-dit-v2-mini", "hunyuan3d-vae-v2-mini", "Hunyuan3D-2mini"),
}


@dataclass(frozen=True)
class WeightsLocation:
    """The files one variant loads from."""

    variant: Variant
    layout: Literal["folder", "combined"]
    config: Path
    weights: Path
    vae_config: Path | None = None
    """A separate VAE (plain keys) to use instead of the ``vae.*`` part, if any."""
    vae_weights: Path | None = None


@dataclass(frozen=True)
class VariantFiles:
    """What was found for one variant, and what is missing (paths relative to MODELS_DIR)."""

    variant: Variant
    location: WeightsLocation | None
    missing: tuple[str, ...]
    notes: tuple[str, ...] = ()


def roots(models_dir: Path, variant: Variant) -> list[Path]:
    repo = SPECS[variant].repo
    return [models_dir, models_dir / repo, models_dir / "tencent" / repo]


def find_variant(models_dir: Path, variant: Variant) -> VariantFiles:
    """Locate ``variant``'s weights under ``models_dir`` in either layout."""
    spec = SPECS[variant]
    notes: list[str] = []
    for root in roots(Path(models_dir), variant):
        folder = root / spec.dit
        config, weights = folder / "config.yaml", _first_file(folder, WEIGHT_FILES)
        layout: Literal["folder", "combined"] = "folder"
        if not (config.is_file() and weights is not None):
            config, weights = root / f"{spec.dit}.yaml", root / f"{spec.dit}.safetensors"
            layout = "combined"
            if not (config.is_file() and weights.is_file()):
                continue
        assert weights is not None
        vae_config, vae_weights = _vae_folder(root, spec.vae)
        try:
            has_vae_part = _has_prefix(weights, "vae.")
        except (OSError, ValueError, struct.error) as exc:
            return VariantFiles(variant, None, (f"{_rel(weights, models_dir)} (unreadable: "
                                                f"{exc})",))
        if vae_config is None and not has_vae_part:
            return VariantFiles(variant, None, (_rel(root / spec.vae / "config.yaml",
                                                     models_dir),
                                                _rel(root / spec.vae / WEIGHT_FILES[0],
                                                     models_dir)))
        if variant == "turbo" and vae_config is None:
            notes.append(f"{spec.vae} not found: decoding with the VAE inside {weights.name}, "
                         "slower than the FlashVDM decoder")
        use_separate = vae_config is not None and (variant == "turbo" or not has_vae_part)
        location = WeightsLocation(variant, layout, config, weights,
                                   vae_config if use_separate else None,
                                   vae_weights if use_separate else None)
        return VariantFiles(variant, location, (), tuple(notes))
    folder = models_dir / spec.dit
    return VariantFiles(variant, None, (_rel(folder / "config.yaml", models_dir),
                                        _rel(folder / WEIGHT_FILES[0], models_dir)))


def _vae_folder(root: Path, name: str) -> tuple[Path | None, Path | None]:
    folder = root / name
    weights = _first_file(folder, WEIGHT_FILES)
    if (folder / "config.yaml").is_file() and weights is not None:
        return folder / "config.yaml", weights
    return None, None


def _first_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _has_prefix(weights: Path, prefix: str) -> bool:
    """Whether a safetensors file holds tensors named ``prefix*`` (a ``.ckpt`` is
    assumed to hold every part, as the published ones do)."""
    if weights.suffix != ".safetensors":
        return True
    return any(name.startswith(prefix) for name in safetensors_names(weights))


def safetensors_names(path: Path) -> list[str]:
    """Tensor names in a safetensors file, read from its JSON header only."""
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        if size > 100_000_000:
            raise ValueError(f"{path} does not look like a safetensors file")
        header = json.loads(handle.read(size))
    return [name for name in header if name != "__metadata__"]


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)
