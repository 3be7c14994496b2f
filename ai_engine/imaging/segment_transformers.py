"""RMBG-2.0 / BiRefNet (and any single-mask segmentation model) through transformers.

The folder is the Hub layout: ``config.json`` (whose ``auto_map`` names the model
code shipped beside it, for RMBG-2.0 and BiRefNet ``birefnet.py``), and
``model.safetensors`` (or a sharded index). Loading goes through
``AutoModelForImageSegmentation.from_pretrained`` with ``local_files_only``.

BiRefNet's code predates transformers 5: its ``__init__`` calls ``.item()`` on a
tensor (which fails under the meta-device initialisation that ``from_pretrained``
now uses) and never calls ``post_init()`` (so ``all_tied_weights_keys`` is
missing). When ``from_pretrained`` fails, the model class is taken from the same
``auto_map`` through transformers' dynamic-module loader, built on the CPU with
real tensors, and its safetensors weights are loaded strictly: the same code and
the same weights, without the initialisation shortcut.

Inference, as the model cards describe it: RGB resized to ``size_px``² (bilinear),
scaled to [0, 1], ImageNet mean/std; the model's last output is the finest mask's
logits, ``[1, 1, size, size]``; sigmoid, resized back to the image.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ai_engine.errors import SetupError
from ai_engine.imaging.cutout import Method
from ai_engine.imaging.decode import RGBA
from ai_engine.imaging.segment import apply_mask

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TransformersSegmenter:
    """A transformers segmentation model that answers one mask's logits."""

    method: Method = "transformers"

    def __init__(self, model: torch.nn.Module, *, device: str, dtype: torch.dtype,
                 size_px: int = 1024, name: str = "model") -> None:
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device = torch.device(device)
        self.dtype = dtype
        self.size_px = size_px
        self.description = f"transformers {name} ({size_px}², {dtype}) on {device}"
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self._mean, self._std = mean, std
        # One forward pass at a time: calls come from a thread pool, and a second
        # 1024² activation set would only add memory, not speed.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, folder: Path, *, device: str, size_px: int = 1024,
             trust_remote_code: bool = True, dtype: torch.dtype | None = None
             ) -> TransformersSegmenter:
        """Load the model in ``folder``; half precision on CUDA, float32 on the CPU."""
        if dtype is None:
            dtype = torch.float16 if device.startswith("cuda") else torch.float32
        model = load_model(folder, trust_remote_code=trust_remote_code)
        return cls(model, device=device, dtype=dtype, size_px=size_px, name=folder.name)

    def __call__(self, rgba: RGBA) -> RGBA:
        height, width = rgba.shape[:2]
        mask = self.mask(rgba)
        if mask.shape != (height, width):
            raise ValueError(f"mask {mask.shape} for an image of {(height, width)}")
        return apply_mask(rgba, mask)

    def mask(self, rgba: RGBA) -> np.ndarray:
        """The object's alpha, uint8 ``(H, W)``."""
        height, width = rgba.shape[:2]
        # 1. resize on the CPU (Pillow), normalise on the device
        small = Image.fromarray(np.ascontiguousarray(rgba[..., :3]), "RGB").resize(
            (self.size_px, self.size_px), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(small).copy()).to(self.device)
        batch = pixels.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        batch = ((batch - self._mean) / self._std).to(self.dtype)
        # 2. forward pass, finest mask's logits
        with self._lock, torch.inference_mode():
            logits = final_logits(self.model(batch))
            # 3. probability at the image's own size
            probability = torch.nn.functional.interpolate(
                logits.float().sigmoid(), size=(height, width), mode="bilinear",
                align_corners=False)
            alpha = probability[0, 0].mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
            return alpha.cpu().numpy()


def final_logits(output: Any) -> torch.Tensor:
    """The finest single-channel logits ``[1, 1, h, w]`` in a model's output.

    BiRefNet answers a list of masks, coarse to fine; models with a ``ModelOutput``
    answer ``.logits``.
    """
    while isinstance(output, (list, tuple)) and output:
        output = output[-1]
    if not isinstance(output, torch.Tensor):
        output = getattr(output, "logits", None)
    if not isinstance(output, torch.Tensor) or output.ndim != 4 or output.shape[1] != 1:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
        raise SetupError(f"the segmentation model answered {shape}, not one mask's logits",
                         code="setup.model_load_failed")
    return output


def load_model(folder: Path, *, trust_remote_code: bool) -> torch.nn.Module:
    """The segmentation model in ``folder``, on the CPU, in float32."""
    from transformers import AutoModelForImageSegmentation

    if not (folder / "config.json").is_file():
        raise SetupError(f"{folder} has no config.json", code="setup.model_missing")
    try:
        model = AutoModelForImageSegmentation.from_pretrained(
            str(folder), trust_remote_code=trust_remote_code, local_files_only=True)
    except (AttributeError, RuntimeError, NotImplementedError, TypeError) as exc:
        # The failures of pre-transformers-5 model code (see the module docstring).
        logger.warning("from_pretrained could not build %s (%s: %s); building it from its "
                       "own code and loading its weights directly", folder,
                       type(exc).__name__, exc)
        model = _load_directly(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise SetupError(f"could not load the segmentation model in {folder}: {exc}",
                         code="setup.model_load_failed") from exc
    return model.float().eval()


def _load_directly(folder: Path, *, trust_remote_code: bool) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForImageSegmentation
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code,
                                            local_files_only=True)
        reference = (getattr(config, "auto_map", None) or {}).get(
            "AutoModelForImageSegmentation")
        model_class: Any
        if reference is not None and trust_remote_code:
            model_class = get_class_from_dynamic_module(reference, str(folder),
                                                        local_files_only=True)
        else:
            model_class = AutoModelForImageSegmentation._model_mapping[type(config)]
        # Keyword: BiRefNet's first positional parameter is not the config.
        model = model_class(config=config)
        state = _read_weights(folder)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except SetupError:
        raise
    except Exception as exc:  # the model's own code may raise anything
        raise SetupError(f"could not load the segmentation model in {folder}: "
                         f"{type(exc).__name__}: {exc}", code="setup.model_load_failed") from exc
    if missing or unexpected:
        raise SetupError(f"{folder}: weights do not match the model ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected, e.g. "
                         f"{(list(missing) + list(unexpected))[:3]})",
                         code="setup.model_load_failed")
    return model


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        raise SetupError(f"{folder} has no model.safetensors", code="setup.model_missing")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        state.update(load_file(folder / shard))
    return state
