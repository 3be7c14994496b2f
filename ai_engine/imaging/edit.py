"""The optional image-edit stage: Qwen-Image-Edit-2509 before the cut-out.

It asks the model to redraw the object "in a three-quarters view, fully visible,
on a neutral solid background contrasting with it", which gives the cut-out a
clean background and the 3D generator a more informative view.

Weights (``MODELS_DIR``, nothing is downloaded):

- ``Qwen-Image-Edit-2509/``: the diffusers folder as published
  (``model_index.json``, ``transformer/``, ``text_encoder/``, ``vae/``,
  ``scheduler/``, ``tokenizer/``, ``processor/``), run through diffusers'
  ``QwenImageEditPlusPipeline`` in bf16;
- optionally the Lightning LoRA (``Settings.edit_lora``): fused into the
  transformer at load, with the scheduler the LoRA was distilled for
  (shift 3, exponential time shift); then 8 steps and ``true_cfg_scale`` 1.0.
  Without it: 40 steps, ``true_cfg_scale`` 4.0 with the negative prompt.

The processor is built by :mod:`ai_engine.imaging.edit_processor` (transformers 5's
own one needs torchvision for a video part this stage never uses).

``load_editor(settings) -> Editor | None`` runs once per process; then
``editor(rgb, seed=...) -> rgb`` from any thread (calls are serialised).
Errors: ``SetupError`` ``setup.model_missing`` / ``setup.model_load_failed``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ai_engine.errors import SetupError

if TYPE_CHECKING:
    import torch

    from ai_engine.config import Settings

logger = logging.getLogger(__name__)

RGB = npt.NDArray[np.uint8]
ProgressFn = Callable[[float], None]

LIGHTNING_STEPS = 8
LIGHTNING_TRUE_CFG_SCALE = 1.0
DEFAULT_STEPS = 40
DEFAULT_TRUE_CFG_SCALE = 4.0
# The scheduler Qwen-Image-Lightning was distilled with (its model card): a fixed
# shift of 3 through the exponential time shift, not the base model's dynamic one.
LIGHTNING_SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": math.log(3),
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": math.log(3),
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": None,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}


class Editor:
    """A loaded edit pipeline and the settings it runs with."""

    def __init__(self, pipeline: Any, *, device: str, steps: int, true_cfg_scale: float,
                 size_px: int, prompt: str, negative_prompt: str, description: str) -> None:
        self.pipeline = pipeline
        self.device = device
        self.steps = steps
        self.true_cfg_scale = true_cfg_scale
        self.size_px = size_px
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.description = description
        # The pipeline keeps per-call state (scheduler, timesteps): one call at a time.
        self._lock = threading.Lock()

    def __call__(self, rgb: RGB, *, seed: int, on_progress: ProgressFn | None = None) -> RGB:
        """Edit ``rgb`` (``(H, W, 3)`` uint8) into a ``size_px``² RGB image.

        ``on_progress(fraction)`` is called after each step and may raise to stop.
        """
        import torch
        from PIL import Image

        image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
        # A CPU generator gives the same noise whatever device the model is on.
        generator = torch.Generator(device="cpu").manual_seed(seed % 2**63)
        # The negative prompt only counts with classifier-free guidance (> 1);
        # diffusers warns on every call when one is passed without it.
        negative = self.negative_prompt if self.true_cfg_scale > 1.0 else None

        def step_end(pipe: Any, step: int, timestep: Any,
                     tensors: dict[str, Any]) -> dict[str, Any]:
            if on_progress is not None:
                on_progress((step + 1) / self.steps)
            return {}

        with self._lock:
            result = self.pipeline(
                image=[image], prompt=self.prompt, negative_prompt=negative,
                true_cfg_scale=self.true_cfg_scale, num_inference_steps=self.steps,
                height=self.size_px, width=self.size_px, generator=generator,
                callback_on_step_end=step_end, output_type="np")
        pixels = np.asarray(result.images[0], dtype=np.float32)
        return np.asarray(np.clip(np.rint(pixels * 255.0), 0, 255), dtype=np.uint8)


def load_editor(settings: Settings) -> Editor | None:
    """The edit stage ``settings`` asks for, or ``None`` where it is not to be loaded.

    ``edit_load``: ``never``; ``always`` (a missing folder or GPU is an error);
    ``auto`` loads when the folder exists and a GPU is there (or ``edit_device``
    is set). ``edit_enabled`` needs the stage, so it turns a miss into an error.
    """
    required = settings.edit_enabled or settings.edit_load == "always"
    if settings.edit_load == "never":
        if settings.edit_enabled:
            raise SetupError("AI_ENGINE_EDIT_ENABLED needs AI_ENGINE_EDIT_LOAD other than never",
                             code="setup.model_missing")
        return None
    folder = Path(settings.models_dir) / settings.edit_model_dir
    if not (folder / "model_index.json").is_file():
        if required:
            raise SetupError(f"the edit model is not in {folder}", code="setup.model_missing")
        logger.info("no edit model in %s; the edit stage is off", folder)
        return None
    device = settings.edit_device or _cuda_device()
    if device is None:
        if required:
            raise SetupError("the edit stage needs a GPU (or AI_ENGINE_EDIT_DEVICE=cpu)",
                             code="setup.model_missing")
        logger.info("no GPU for the edit model; the edit stage is off")
        return None
    lora = Path(settings.models_dir) / settings.edit_lora
    editor = _build(folder, device=device, lora=lora if lora.is_file() else None,
                    settings=settings)
    logger.info("edit stage: %s", editor.description)
    return editor


def _build(folder: Path, *, device: str, lora: Path | None, settings: Settings) -> Editor:
    import torch

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    pipeline = load_pipeline(folder, dtype=dtype, lora=lora)
    if settings.edit_cpu_offload and device.startswith("cuda"):
        pipeline.enable_model_cpu_offload(device=device)
    else:
        pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    steps = settings.edit_steps or (LIGHTNING_STEPS if lora else DEFAULT_STEPS)
    cfg = settings.edit_true_cfg_scale
    if cfg is None:
        cfg = LIGHTNING_TRUE_CFG_SCALE if lora else DEFAULT_TRUE_CFG_SCALE
    description = (f"{folder.name}{' + ' + lora.name if lora else ''} on {device} "
                   f"({str(dtype).removeprefix('torch.')}, {steps} steps, "
                   f"true_cfg_scale {cfg}, {settings.edit_size_px}²)")
    return Editor(pipeline, device=device, steps=steps, true_cfg_scale=cfg,
                  size_px=settings.edit_size_px, prompt=settings.edit_prompt,
                  negative_prompt=settings.edit_negative_prompt, description=description)


def load_pipeline(folder: Path, *, dtype: torch.dtype, lora: Path | None = None) -> Any:
    """``QwenImageEditPlusPipeline`` from ``folder`` on the CPU, the LoRA fused in."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline

    from ai_engine.imaging.edit_processor import load_processor

    try:
        processor = load_processor(folder / "processor")
        pipeline = QwenImageEditPlusPipeline.from_pretrained(
            str(folder), processor=processor, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise SetupError(f"could not load the edit model in {folder}: {exc}",
                         code="setup.model_load_failed") from exc
    if lora is not None:
        try:
            pipeline.load_lora_weights(str(lora.parent), weight_name=lora.name,
                                       adapter_name="lightning")
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise SetupError(f"could not load the LoRA {lora}: {exc}",
                             code="setup.model_load_failed") from exc
        # Fused once here rather than applied at every step: same output, no overhead.
        pipeline.fuse_lora(adapter_names=["lightning"], lora_scale=1.0)
        pipeline.unload_lora_weights()
        pipeline.scheduler = FlowMatchEulerDiscreteScheduler.from_config(LIGHTNING_SCHEDULER)
    return pipeline


def _cuda_device() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else None
