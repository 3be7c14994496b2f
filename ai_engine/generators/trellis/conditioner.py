"""Image conditioning: DINOv2 ViT-L/14 with 4 registers, as TRELLIS uses it.

The framed 518² image (RGB premultiplied on black) is scaled to 0..1,
normalised with the ImageNet mean and standard deviation and passed through
DINOv2; the condition is the last block's output *before* the model's final
layer norm (DINOv2's ``x_prenorm``: class token, 4 register tokens and 37²
patch tokens, 1374 × 1024), layer-normed without affine parameters. The
negative condition for guidance is all zeros.

The weights are read from a local folder in the Hugging Face ``transformers``
format (``config.json`` + ``model.safetensors`` of
``facebook/dinov2-with-registers-large``), by default
``MODELS_DIR/dinov2-vitl14-reg``; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ai_engine.errors import SetupError

#: Folder of the DINOv2 weights under ``MODELS_DIR``.
DINOV2_FOLDER = "dinov2-vitl14-reg"
IMAGE_SIZE = 518
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageConditioner:
    """Turns a framed RGB image into TRELLIS's conditioning tokens ``[1, T, C]``."""

    def __init__(self, model: Any, *, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.channels = int(model.config.hidden_size)

    @classmethod
    def load(cls, folder: Path, *, device: torch.device | str,
             dtype: torch.dtype = torch.float32) -> ImageConditioner:
        """Load a ``transformers`` DINOv2-with-registers model from ``folder``."""
        if not (folder / "config.json").is_file():
            raise SetupError(f"missing DINOv2 weights in {folder} (expected the transformers "
                             "files of facebook/dinov2-with-registers-large)",
                             code="setup.models_missing")
        try:
            from transformers import AutoConfig, AutoModel
        except ImportError as exc:
            raise SetupError("the trellis generator needs the 'transformers' package",
                             code="setup.not_installed") from exc
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        if config.model_type != "dinov2_with_registers":
            raise SetupError(f"{folder} holds a {config.model_type!r} model; TRELLIS is "
                             "conditioned on DINOv2 with registers", code="setup.models_invalid")
        model = AutoModel.from_pretrained(folder, local_files_only=True)
        device = torch.device(device)
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        return cls(model, device=device, dtype=dtype)

    def preprocess(self, rgb: npt.NDArray[np.uint8]) -> Tensor:
        """``[H, W, 3]`` uint8 → normalised ``[1, 3, 518, 518]`` on the model's device."""
        if rgb.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
            rgb = np.asarray(Image.fromarray(rgb, "RGB").resize(
                (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS))
        pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8)).to(self.device)
        pixels = pixels.permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=self.device)[:, None, None]
        return ((pixels - mean) / std)[None]

    def __call__(self, rgb: npt.NDArray[np.uint8]) -> Tensor:
        """Conditioning tokens ``[1, T, C]`` (float32) of an RGB image."""
        pixels = self.preprocess(rgb).to(self.dtype)
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        prenorm = out.hidden_states[-1].float()
        return F.layer_norm(prenorm, prenorm.shape[-1:])
