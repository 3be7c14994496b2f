"""Tiny segmentation models written by the tests, in the layouts users install.

- :func:`write_onnx_segmenter`: an ONNX graph (one 1x1 convolution) whose logits
  are high where the normalised green channel is low, so it finds the red disc
  of :func:`tests.imaging.images.disc_scene`: a real model with a known answer.
- :func:`write_transformers_segmenter`: a Hub-layout folder (``config.json`` with
  ``auto_map``, the model's code file, ``model.safetensors``) like RMBG-2.0 and
  BiRefNet ship, for ``AutoModelForImageSegmentation`` with ``trust_remote_code``.
  Its code either follows transformers 5 (``post_init``) or reproduces BiRefNet's
  two incompatibilities (``.item()`` during ``__init__``, no ``post_init``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

# Normalised green (ImageNet statistics) between the disc's (40) and the background's (≥ 176).
_GREEN_THRESHOLD = 0.3
_GAIN = 8.0

MODEL_CODE = textwrap.dedent('''
    """A tiny mask model with BiRefNet's interface: forward(x) -> [coarse, fine] logits."""
    import torch
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel


    class TinySegConfig(PretrainedConfig):
        model_type = "tiny_seg"

        def __init__(self, hidden_size=8, **kwargs):
            self.hidden_size = hidden_size
            super().__init__(**kwargs)


    class _Layers(nn.Module):
        def build(self, config):
            self.encode = nn.Conv2d(3, config.hidden_size, 3, stride=2, padding=1)
            self.coarse = nn.Conv2d(config.hidden_size, 1, 1)
            self.fine = nn.Conv2d(4, 1, 1)

        def masks(self, x):
            coarse = self.coarse(torch.relu(self.encode(x)))
            up = nn.functional.interpolate(coarse, size=x.shape[-2:], mode="bilinear")
            return [coarse, self.fine(torch.cat([x, up], dim=1))]


    class TinySegModel(PreTrainedModel):
        config_class = TinySegConfig

        def __init__(self, config):
            super().__init__(config)
            self.layers = _Layers()
            self.layers.build(config)
            self.post_init()

        def forward(self, x):
            return self.layers.masks(x)


    class QuirkySegModel(PreTrainedModel):
        """BiRefNet's constructor habits: bb_pretrained first, .item() in __init__,
        no post_init()."""

        config_class = TinySegConfig

        def __init__(self, bb_pretrained=True, config=TinySegConfig()):
            super().__init__(config)
            self.rates = [x.item() for x in torch.linspace(0, 0.1, 2)]
            self.layers = _Layers()
            self.layers.build(config)

        def forward(self, x):
            return self.layers.masks(x)
''')


def write_onnx_segmenter(path: Path, *, probabilities: bool = True) -> Path:
    """Write the green-threshold ONNX model to ``path`` (input ``[1, 3, h, w]``).

    ``probabilities``: end in a sigmoid as U²-Net and IS-Net graphs do; without it
    the graph answers logits, as BiRefNet's does (its rembg session applies the
    sigmoid itself).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.zeros((1, 3, 1, 1), np.float32)
    weight[0, 1, 0, 0] = -_GAIN
    bias = np.array([_GAIN * _GREEN_THRESHOLD], np.float32)
    nodes = [helper.make_node("Conv", ["input", "weight", "bias"],
                              ["logits" if probabilities else "mask"], kernel_shape=[1, 1])]
    if probabilities:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["mask"]))
    graph = helper.make_graph(
        nodes, "green_threshold",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, "h", "w"])],
        initializer=[numpy_helper.from_array(weight, "weight"),
                     numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime still in use
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_transformers_segmenter(folder: Path, *, quirky: bool = False,
                                 known_answer: bool = False, seed: int = 0) -> Path:
    """Write a Hub-layout remote-code segmentation model into ``folder``.

    ``known_answer`` sets the fine head to the green threshold (the coarse path
    still random); otherwise every weight is random.
    """
    import torch
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny_seg.py").write_text(MODEL_CODE)
    class_name = "QuirkySegModel" if quirky else "TinySegModel"
    model_class: Any = get_class_from_dynamic_module(f"tiny_seg.{class_name}", str(folder),
                                                     local_files_only=True)
    config_class = model_class.config_class
    config_class.register_for_auto_class()
    model_class.register_for_auto_class("AutoModelForImageSegmentation")
    torch.manual_seed(seed)
    model = model_class(config=config_class(hidden_size=8))
    if quirky:
        # save_pretrained needs what post_init() would have set up (it also
        # initialises the weights, so it comes before the known answer is set).
        model.post_init()
    if known_answer:
        with torch.no_grad():
            fine = model.layers.fine
            fine.weight.zero_()
            fine.weight[0, 1] = -_GAIN
            fine.bias.fill_(_GAIN * _GREEN_THRESHOLD)
    model.save_pretrained(str(folder))
    return folder


# -- Qwen-Image-Edit ----------------------------------------------------------------------

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def byte_level_tokenizer() -> Any:
    """A ``Qwen2Tokenizer`` with Qwen's special tokens and a byte-level BPE vocabulary
    without merges (every byte one token): the real class, no download."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return tokenizer


def write_qwen_image_edit(folder: Path) -> Path:
    """Write a tiny random Qwen-Image-Edit-2509 in the published folder layout.

    The components follow diffusers' own fast tests for ``QwenImageEditPlusPipeline``
    (2-layer MMDiT, 2-layer Qwen2.5-VL), with two changes that keep a CPU run
    short: the VAE downsamples 16x in 4 stages (diffusers' test VAE downsamples 4x,
    so the 1024² image the pipeline always encodes became 65k tokens), and the
    tokenizer is a byte-level BPE with no merges plus Qwen's special tokens, built
    here (diffusers' tests download a tiny Qwen2-VL tokenizer).
    """
    import json

    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    tokenizer = byte_level_tokenizer()
    ids = {token: int(tokenizer.convert_tokens_to_ids(token)) for token in SPECIAL_TOKENS}
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 16)

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=3, joint_attention_dim=16, guidance_embeds=False,
        axes_dims_rope=(8, 4, 4))
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(
        base_dim=2, z_dim=4, dim_mult=[1, 1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, False, False, False], latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4)
    torch.manual_seed(0)
    text_config = {
        "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": len(tokenizer),
        "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default",
                         "type": "default"},
        "rope_theta": 1000000.0, "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}
    vision_config = {"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                     "out_hidden_size": 16}
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=text_config, vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"]))
    pipeline = QwenImageEditPlusPipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder, tokenizer=tokenizer, processor=None)
    pipeline.save_pretrained(str(folder))  # type: ignore[attr-defined]
    # The published processor/ folder: the tokenizer files and the image
    # processor's preprocessor_config.json; model_index.json names its class.
    tokenizer.save_pretrained(str(folder / "processor"))
    image_processor.save_pretrained(str(folder / "processor"))
    index = json.loads((folder / "model_index.json").read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def write_lightning_lora(path: Path, *, rank: int = 4, seed: int = 0) -> Path:
    """A LoRA for the tiny transformer in the community layout (``lora_down`` /
    ``lora_up`` / ``alpha`` keys), which diffusers converts when loading."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    inner = 48  # heads x head dim of the tiny transformer
    state: dict[str, torch.Tensor] = {}
    for block in range(2):
        for name in ("to_q", "to_k", "to_v", "to_out.0"):
            key = f"transformer_blocks.{block}.attn.{name}"
            state[f"{key}.lora_down.weight"] = torch.randn(rank, inner, generator=generator)
            state[f"{key}.lora_up.weight"] = torch.randn(inner, rank, generator=generator)
            state[f"{key}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
