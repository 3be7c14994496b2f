"""Which model weights are present in ``MODELS_DIR``, and which generators can run.

What ``ai-engine models`` prints, and what ``auto`` and the executors consult.
Only file presence (and safetensors headers) is checked: nothing is loaded and
torch is not imported, so this answers in milliseconds on any host.

Layouts looked for:

* ``hunyuan3d`` (one entry per variant v2-0, fast, turbo, mini): see
  :mod:`ai_engine.generators.hunyuan3d.layout` (the official
  ``hunyuan3d-dit-v2-0/`` folders, or one combined ``hunyuan3d-dit-v2-0.safetensors``
  with ``hunyuan3d-dit-v2-0.yaml``);
* ``trellis``: ``trellis-image-large/pipeline.json`` and, under ``ckpts/``, a
  ``.json`` and a ``.safetensors`` for each of the four checkpoints a Gaussian
  result needs, plus DINOv2 with registers in ``dinov2-vitl14-reg/``
  (transformers files: ``config.json`` and ``model.safetensors``);
* ``silhouette`` and the classical cut-out need no weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ai_engine.generators.hunyuan3d.layout import SPECS, VARIANTS, find_variant

TRELLIS_FOLDER = "trellis-image-large"
TRELLIS_CHECKPOINTS = ("ss_flow_img_dit_L_16l8_fp16", "ss_dec_conv3d_16l8_fp16",
                       "slat_flow_img_dit_L_64l8p2_fp16", "slat_dec_gs_swin8_B_64l8gs32_fp16")
DINOV2_REG_FOLDER = "dinov2-vitl14-reg"
DINOV2_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

#: Generators that are practical only on a GPU (hours per job on a CPU at full size).
GPU_GENERATORS = frozenset({"hunyuan3d", "trellis"})


@dataclass(frozen=True)
class ModelStatus:
    """One model (or model variant) and what of it is on disk."""

    generator: str
    """``hunyuan3d``, ``trellis``, ``silhouette`` or ``cutout``."""
    name: str
    """e.g. ``hunyuan3d-dit-v2-0`` or ``trellis-image-large``."""
    present: bool
    """Every required file is there."""
    path: Path | None = None
    """Where it was found (the weights file or folder), when present."""
    missing: tuple[str, ...] = ()
    """Required files not found, relative to MODELS_DIR."""
    notes: tuple[str, ...] = field(default=())
    """Optional parts missing, the layout used, and the like."""


def inventory(models_dir: Path) -> list[ModelStatus]:
    """Every known model with what was found under ``models_dir``."""
    models_dir = Path(models_dir)
    statuses = [ModelStatus("silhouette", "silhouette", True, notes=("needs no weights",)),
                ModelStatus("cutout", "classical background removal", True,
                            notes=("needs no weights",))]
    statuses.extend(_hunyuan(models_dir))
    statuses.append(_trellis(models_dir))
    return statuses


def generators_with_weights(models_dir: Path) -> set[str]:
    """Learned generators with at least one complete set of weights."""
    return {s.generator for s in inventory(models_dir)
            if s.present and s.generator in GPU_GENERATORS}


def available_generators(models_dir: Path, *, has_gpu: bool,
                         allow_cpu: bool = False) -> set[str]:
    """Generators that can run here: ``silhouette`` always; ``hunyuan3d`` and
    ``trellis`` when their weights are present and a GPU is (or ``allow_cpu``:
    tests and development hosts with small models)."""
    found = generators_with_weights(models_dir)
    return {"silhouette"} | (found if has_gpu or allow_cpu else set())


def format_inventory(models_dir: Path, *, has_gpu: bool) -> str:
    """The report ``ai-engine models`` prints."""
    models_dir = Path(models_dir)
    lines = [f"models dir: {models_dir.resolve()}", f"GPU: {'yes' if has_gpu else 'no'}", ""]
    for status in inventory(models_dir):
        mark = "present" if status.present else "missing"
        where = f" ({status.path})" if status.path else ""
        lines.append(f"{status.generator:<11} {status.name:<34} {mark}{where}")
        lines.extend(f"{'':<12}missing: {name}" for name in status.missing)
        lines.extend(f"{'':<12}note: {note}" for note in status.notes)
    runnable = sorted(available_generators(models_dir, has_gpu=has_gpu))
    lines += ["", f"generators that can run: {', '.join(runnable)}"]
    idle = sorted(generators_with_weights(models_dir) - set(runnable))
    if idle:
        lines.append(f"weights present but no GPU for: {', '.join(idle)}")
    return "\n".join(lines)


def _hunyuan(models_dir: Path) -> list[ModelStatus]:
    out = []
    for variant in VARIANTS:
        files = find_variant(models_dir, variant)
        name = SPECS[variant].dit
        if files.location is None:
            out.append(ModelStatus("hunyuan3d", name, False, missing=files.missing,
                                   notes=files.notes))
            continue
        loc = files.location
        notes = [f"{loc.layout} layout"]
        if loc.vae_weights is not None:
            notes.append(f"VAE from {loc.vae_weights.parent.name}")
        out.append(ModelStatus("hunyuan3d", name, True, path=loc.weights,
                               notes=tuple(notes) + files.notes))
    return out


def _trellis(models_dir: Path) -> ModelStatus:
    root = models_dir / TRELLIS_FOLDER
    required = [f"{TRELLIS_FOLDER}/pipeline.json"]
    for stem in TRELLIS_CHECKPOINTS:
        required += [f"{TRELLIS_FOLDER}/ckpts/{stem}.json",
                     f"{TRELLIS_FOLDER}/ckpts/{stem}.safetensors"]
    missing = [name for name in required if not (models_dir / name).is_file()]
    dinov2 = models_dir / DINOV2_REG_FOLDER
    if not (dinov2 / "config.json").is_file():
        missing.append(f"{DINOV2_REG_FOLDER}/config.json")
    if not any((dinov2 / name).is_file() for name in DINOV2_WEIGHTS):
        missing.append(f"{DINOV2_REG_FOLDER}/{DINOV2_WEIGHTS[0]}")
    return ModelStatus("trellis", TRELLIS_FOLDER, not missing,
                       path=root if not missing else None, missing=tuple(missing))
