"""Timings of the learned imaging stages with full-size, randomly initialised models.

    python benchmarks/bench_imaging_models.py [--device cuda] [--runs N] [--edit]
        [--work DIR] [--small]

Cut-out at 1024² per method (coffee.png scaled to 1024²):

- ``classical``: :func:`ai_engine.imaging.cutout.remove_background` (CPU);
- ``rembg``: a :class:`RembgSegmenter` on an ONNX export of the BiRefNet-size
  proxy below, through rembg's ``birefnet-general`` session (1024² input,
  sigmoid, min-max); onnxruntime's CUDA provider where installed, else the CPU;
- ``transformers``: a :class:`TransformersSegmenter` on the same proxy in
  PyTorch, float32 and float16 (bfloat16 too on CUDA).

The proxy has BiRefNet's backbone, Swin-L (embed 192, depths 2-2-18-2, window 12,
197 M parameters; BiRefNet and RMBG-2.0 have about 220 M in all) with a light FPN
decoder, and BiRefNet's interface (a list of logits, finest last). BiRefNet's own
decoder is heavier than this one, so its figures are a lower bound for BiRefNet.
Weights are random: the masks are meaningless, the times are not; the mask is
timed without the coverage check a meaningless mask would fail.

``--edit`` times Qwen-Image-Edit-2509 (MMDiT 20 B, Qwen2.5-VL-7B text encoder,
the published VAE) randomly initialised in bf16 on the GPU, 8 steps (the
Lightning setting), ``true_cfg_scale`` 1.0, 1024² out. The tokenizer is a
byte-level stand-in (no BPE merges), so the prompt is about 4x more tokens than
with Qwen's: the text encoder's share is an upper bound.

``--small`` shrinks every model to a few layers, to check this script on a CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import skimage
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai_engine.imaging.cutout import remove_background
from ai_engine.imaging.segment import RembgSegmenter
from ai_engine.imaging.segment_transformers import TransformersSegmenter

SIDE = 1024


class BiRefNetSizeProxy(nn.Module):
    """Swin-L backbone + light FPN decoder; forward(x) -> [logits at x's size]."""

    def __init__(self, *, small: bool = False) -> None:
        from transformers import SwinBackbone, SwinConfig

        super().__init__()
        stages = ["stage1", "stage2", "stage3", "stage4"]
        if small:
            options: dict[str, Any] = {"embed_dim": 16, "depths": [1, 1, 1, 1],
                                       "num_heads": [1, 1, 1, 1]}
        else:
            options = {"embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48]}
        options["out_features"] = stages
        config = SwinConfig(window_size=12, **options)
        self.backbone = SwinBackbone(config)
        width = 16 if small else 128
        self.lateral = nn.ModuleList(nn.Conv2d(config.embed_dim * 2**i, width, 1)
                                     for i in range(4))
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, 64, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(64, 1, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.backbone(x).feature_maps
        size = features[0].shape[-2:]
        fused = sum(nn.functional.interpolate(lateral(f), size=size, mode="bilinear")
                    for lateral, f in zip(self.lateral, features, strict=True))
        logits = self.head(self.fuse(fused))
        return [nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear")]


def _times_ms(fn: Callable[[], object], *, runs: int, sync: Callable[[], None]) -> list[float]:
    fn()  # warm-up: allocations, kernel choices, lazy initialisation
    sync()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - started))
    return times


def _report(name: str, times: list[float]) -> None:
    print(f"{name:48s} median {statistics.median(times):9.1f} ms   "
          f"min {min(times):9.1f} ms   ({len(times)} runs)", flush=True)


def bench_cutout(*, device: str, runs: int, work: Path, small: bool,
                 skip_transformers: bool = False) -> None:
    coffee = Image.open(Path(skimage.__file__).parent / "data" / "coffee.png").convert("RGBA")
    rgba = np.asarray(coffee.resize((SIDE, SIDE), Image.Resampling.LANCZOS)).copy()
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    _report("classical (CPU)", _times_ms(lambda: remove_background(rgba), runs=runs,
                                         sync=lambda: None))

    torch.manual_seed(0)
    proxy = BiRefNetSizeProxy(small=small).eval()
    count = sum(p.numel() for p in proxy.parameters()) / 1e6
    print(f"# proxy: {count:.0f} M parameters", flush=True)
    # Half precision only where it is fast: on a CPU it is emulated, several times slower.
    dtypes = [torch.float32, torch.float16, torch.bfloat16] if cuda else [torch.float32]
    if skip_transformers:
        dtypes = []
    heavy_runs = runs if cuda else max(1, runs // 3)
    for dtype in dtypes:
        segmenter = TransformersSegmenter(proxy, device=device, dtype=dtype, size_px=SIDE,
                                          name="proxy")
        _report(f"transformers proxy {str(dtype)[6:]} on {device}",
                _times_ms(partial(segmenter.mask, rgba), runs=heavy_runs, sync=sync))
    proxy.to("cpu", torch.float32)

    path = work / "rembg" / "birefnet-general.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with torch.inference_mode():
            torch.onnx.export(proxy, (torch.randn(1, 3, SIDE, SIDE),), str(path),
                              dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["logits"])
        print(f"# exported the proxy to ONNX in {time.perf_counter() - started:.0f} s",
              flush=True)
    rembg = RembgSegmenter(path, device=device)
    session = rembg.session
    provider = session.inner_session.get_providers()[0]
    image = Image.fromarray(rgba[..., :3])
    _report(f"rembg birefnet-general proxy ({provider})",
            _times_ms(lambda: session.predict(image), sync=lambda: None,
                      runs=runs if provider == "CUDAExecutionProvider" else min(runs, 3)))


def bench_edit(*, device: str, runs: int, small: bool) -> None:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from ai_engine.imaging.edit import LIGHTNING_SCHEDULER, Editor
    from ai_engine.imaging.edit_processor import ImageOnlyQwen2VLProcessor
    from tests.imaging.tiny_models import SPECIAL_TOKENS, byte_level_tokenizer

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tokenizer = byte_level_tokenizer()
    ids = {token: int(tokenizer.convert_tokens_to_ids(token)) for token in SPECIAL_TOKENS}
    from transformers import Qwen2VLImageProcessor

    processor = ImageOnlyQwen2VLProcessor(Qwen2VLImageProcessor(), tokenizer)
    text = ({"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2,
             "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default"}}
            if small else
            {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4,
             "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default"}})
    text.update({"vocab_size": 152064, "rope_theta": 1000000.0})
    vision = ({"depth": 2, "hidden_size": 32, "intermediate_size": 32, "num_heads": 2,
               "out_hidden_size": 64, "fullatt_block_indexes": [1]}
              if small else
              {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
               "out_hidden_size": 3584, "fullatt_block_indexes": [7, 15, 23, 31]})
    started = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        transformer = (QwenImageTransformer2DModel(
            num_layers=2, attention_head_dim=32, num_attention_heads=2, joint_attention_dim=64,
            axes_dims_rope=(8, 12, 12)) if small else QwenImageTransformer2DModel())
        vae = AutoencoderKLQwenImage()
        text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"]))
    torch.set_default_dtype(previous)
    pipeline: Any = QwenImageEditPlusPipeline(
        transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        processor=processor,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(LIGHTNING_SCHEDULER))
    pipeline.set_progress_bar_config(disable=True)
    billions = sum(p.numel() for p in pipeline.transformer.parameters()) / 1e9
    print(f"# edit pipeline built in {time.perf_counter() - started:.0f} s "
          f"(transformer {billions:.1f} B parameters, {dtype})", flush=True)
    side = 256 if small else 1024
    editor = Editor(pipeline, device=device, steps=8, true_cfg_scale=1.0, size_px=side,
                    prompt="show this object in a three-quarters view, fully visible, on a "
                    "neutral solid background contrasting with it", negative_prompt="",
                    description="random")
    photo = np.asarray(Image.open(Path(skimage.__file__).parent / "data" / "coffee.png")
                       .convert("RGB"))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    _report(f"edit 8 steps {side}² on {device}",
            _times_ms(lambda: editor(photo, seed=0), runs=runs, sync=sync))
    if device.startswith("cuda"):
        print(f"# peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_imaging_models"))
    parser.add_argument("--edit", action="store_true")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--no-cutout", action="store_true")
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}, "
          f"Python {platform.python_version()}", flush=True)
    if not args.no_cutout:
        bench_cutout(device=args.device, runs=args.runs, work=args.work, small=args.small,
                     skip_transformers=args.skip_transformers)
    if args.edit:
        bench_edit(device=args.device, runs=min(args.runs, 3), small=args.small)


if __name__ == "__main__":
    main()
