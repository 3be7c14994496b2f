"""The image conditioner: DINOv2 (from ``transformers``) on the framed image.

hy3dgen's own encoder module needs torchvision for three tensor transforms;
this one does them with torch (the same ``interpolate`` call torchvision's
tensor ``Resize`` makes) and keeps hy3dgen's interface and state-dict layout
(``main_image_encoder.model.<Dinov2Model keys>``), so its weights load
unchanged and hy3dgen's pipeline accepts it as its ``conditioner``.

Official checkpoints were written with transformers 4.x key names
(``attention.attention.query``, fused SwiGLU ``mlp.weights_in``); newer
transformers name them ``attention.q_proj`` and ``mlp.gate_proj``/``up_proj``.
:func:`match_dinov2_names` converts either way to what the installed
transformers expects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from ai_engine.errors import SetupError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PATCH_PX = 14

# transformers 4.x name fragment -> newer name fragment (attention and SwiGLU output).
_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
    ("mlp.weights_out.", "mlp.down_proj."),
)


class DinoImageEncoder(nn.Module):
    """DINOv2 tokens of an image in ``[-1, 1]`` (``[B, 3, H, W]``): ``[B, tokens, hidden]``."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: Dinov2Config, *, image_size: int = 224,
                 use_cls_token: bool = True) -> None:
        super().__init__()
        config._attn_implementation = "sdpa"
        self.model = Dinov2Model(config)
        self.model.eval()
        self.model.requires_grad_(False)
        self.image_size = image_size
        self.use_cls_token = use_cls_token
        self.num_tokens = (image_size // _PATCH_PX) ** 2 + (1 if use_cls_token else 0)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dtype = self.model.embeddings.patch_embeddings.projection.weight.dtype
        # Same order of operations as hy3dgen: to [0, 1], to the model dtype,
        # resize (short side) with antialiasing, centre crop, normalise.
        x = ((image + 1.0) / 2.0).to(self.mean.device, dtype)
        height, width = x.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (max(self.image_size, math.floor(height * scale)),
                max(self.image_size, math.floor(width * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        top = (size[0] - self.image_size) // 2
        left = (size[1] - self.image_size) // 2
        x = x[..., top:top + self.image_size, left:left + self.image_size]
        x = (x - self.mean.to(dtype)) / self.std.to(dtype)
        tokens: torch.Tensor = self.model(pixel_values=x).last_hidden_state
        return tokens if self.use_cls_token else tokens[:, 1:]

    def unconditional(self, batch_size: int) -> torch.Tensor:
        """The unconditional tokens the DiT was trained with: zeros."""
        weight = self.model.embeddings.patch_embeddings.projection.weight
        return torch.zeros(batch_size, self.num_tokens, self.hidden_size,
                           device=weight.device, dtype=weight.dtype)


class ImageConditioner(nn.Module):
    """hy3dgen's ``SingleImageEncoder`` interface: ``{"main": tokens}``."""

    def __init__(self, encoder: DinoImageEncoder) -> None:
        super().__init__()
        self.main_image_encoder = encoder

    @classmethod
    def from_config(cls, params: Mapping[str, Any]) -> ImageConditioner:
        """Build from the ``conditioner.params`` section of a Hunyuan3D config.

        Only a DINOv2 encoder described inline (``kwargs.config``) is accepted:
        a ``version`` would make transformers fetch it from the Hub.
        """
        main = params.get("main_image_encoder") or {}
        kwargs = dict(main.get("kwargs") or {})
        if main.get("type") != "DinoImageEncoder" or not isinstance(kwargs.get("config"), dict):
            raise SetupError("the Hunyuan3D config must describe a DinoImageEncoder with an "
                             "inline 'config' (a Hub 'version' is not loaded)",
                             code="setup.bad_config")
        config = Dinov2Config.from_dict(kwargs["config"])
        return cls(DinoImageEncoder(config, image_size=int(kwargs.get("image_size", 224)),
                                    use_cls_token=bool(kwargs.get("use_cls_token", True))))

    def forward(self, image: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        return {"main": self.main_image_encoder(image)}

    def unconditional_embedding(self, batch_size: int, **_: Any) -> dict[str, torch.Tensor]:
        return {"main": self.main_image_encoder.unconditional(batch_size)}

    def load_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a conditioner state dict written with any transformers naming."""
        expected = self.state_dict()
        converted = match_dinov2_names(state, set(expected))
        # The mask token only serves masked-image training; old exports may lack it.
        for name in expected:
            if name.endswith("embeddings.mask_token") and name not in converted:
                converted[name] = expected[name]
        missing, unexpected = self.load_state_dict(converted, strict=False)
        if missing or unexpected:
            raise SetupError(f"conditioner weights do not fit DINOv2: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}", code="setup.bad_weights")


def match_dinov2_names(state: Mapping[str, torch.Tensor],
                       expected: set[str]) -> dict[str, torch.Tensor]:
    """``state`` renamed to the installed transformers' DINOv2 key names (``expected``)."""
    if set(state) <= expected:
        return dict(state)
    legacy = not any(".attention.q_proj." in name for name in expected)
    return rename_dinov2(state, legacy=legacy)


def rename_dinov2(state: Mapping[str, torch.Tensor], *,
                  legacy: bool) -> dict[str, torch.Tensor]:
    """DINOv2 keys in transformers 4.x naming (``legacy``) or the newer one."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        for old, new in _RENAMES:
            name = name.replace(new, old) if legacy else name.replace(old, new)
        out[name] = tensor
    if legacy:  # gate and up projections -> one fused SwiGLU input [2h, d], gate first
        for name in [n for n in out if ".mlp.gate_proj." in n]:
            up = out.pop(name.replace(".gate_proj.", ".up_proj."))
            out[name.replace(".gate_proj.", ".weights_in.")] = torch.cat([out.pop(name), up])
    else:  # the fused input's first half goes through SiLU (the gate)
        for name in [n for n in out if ".mlp.weights_in." in n]:
            gate, up = out.pop(name).chunk(2, dim=0)
            out[name.replace(".weights_in.", ".gate_proj.")] = gate
            out[name.replace(".weights_in.", ".up_proj.")] = up
    return out
