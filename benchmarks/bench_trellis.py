"""Speed of the ``trellis`` generator at full size, with random weights, on one GPU.

Builds the four TRELLIS networks from the published ``ckpts/*.json`` arguments
and a ViT-L/14 DINOv2 with registers, all randomly initialised on the device
(trunks in float16 as published), then times a framed photo → Gaussians at the
service defaults (sparse structure 8 steps cfg 5.75 with 3 oversamples, SLAT 20
steps cfg 2.4).

Random weights give a random structure (about half the 64³ grid occupied, where
real objects occupy a surface shell of 10–25 k voxels), so after the sparse
structure stage has run (and been timed) its result is replaced by an
ellipsoidal shell of ``--voxels`` voxels. The structure stage itself runs as in
production.

    python benchmarks/bench_trellis.py                # on cuda
    python benchmarks/bench_trellis.py --tiny --device cpu   # smoke test of this script

Prints parameter counts, per-stage times (median of ``--repeats``), peak GPU
memory, the end-to-end time of ``generator(framed, ...)`` (marked ``*`` when the
latent flow replays CUDA graphs, and again without them), and with
``--profile`` the top kernels of one guided step of each flow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai_engine.generators.trellis import fused
from ai_engine.generators.trellis.conditioner import ImageConditioner
from ai_engine.generators.trellis.loading import build_model, read_pipeline_config
from ai_engine.generators.trellis.pipeline import (
    TrellisGenerator,
    TrellisModels,
    TrellisParams,
    to_service_gaussians,
)
from ai_engine.imaging.frame import frame_trellis

PUBLISHED = Path(__file__).resolve().parents[1] / "tests" / "generators" / "trellis" / "published"
STEMS = {"ss_flow": "ss_flow_img_dit_L_16l8_fp16", "ss_decoder": "ss_dec_conv3d_16l8_fp16",
         "slat_flow": "slat_flow_img_dit_L_64l8p2_fp16",
         "gs_decoder": "slat_dec_gs_swin8_B_64l8gs32_fp16"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(device: torch.device, dtype: torch.dtype, *, tiny: bool) -> TrellisModels:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    specs: dict[str, Any] = {}
    if tiny:
        from tests.generators.trellis.tiny import TINY
        specs = {role: TINY[stem] for role, stem in STEMS.items()}
    else:
        specs = {role: json.loads((PUBLISHED / "ckpts" / f"{stem}.json").read_text())
                 for role, stem in STEMS.items()}
    nets = {}
    torch.manual_seed(0)
    for role, spec in specs.items():
        with torch.device(device):
            net = build_model(spec["name"], spec["args"])
        net.set_compute_dtype(dtype)  # type: ignore[operator]
        nets[role] = net.eval().requires_grad_(False)
    width = 32 if tiny else 1024
    config = Dinov2WithRegistersConfig(
        hidden_size=width, num_hidden_layers=2 if tiny else 24,
        num_attention_heads=2 if tiny else 16, mlp_ratio=4, image_size=518, patch_size=14,
        num_register_tokens=4)
    with torch.device(device):
        dino = Dinov2WithRegistersModel(config).eval().requires_grad_(False)
    conditioner = ImageConditioner(dino, device=device, dtype=torch.float32)
    return TrellisModels(conditioner=conditioner, **nets)  # type: ignore[arg-type]


def shell_coords(voxels: int, resolution: int, device: torch.device) -> torch.Tensor:
    """The ``voxels`` grid cells nearest the surface of an ellipsoid: an object-like shell."""
    axis = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution - 0.5
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    radius = torch.sqrt((x / 0.42) ** 2 + (y / 0.30) ** 2 + (z / 0.45) ** 2)
    nearest = torch.argsort((radius - 1).abs().flatten())[:voxels]
    cells = torch.stack(torch.unravel_index(torch.sort(nearest).values,
                                            (resolution,) * 3), dim=1)
    return torch.cat([torch.zeros(voxels, 1, dtype=torch.long), cells], 1).int().to(device)


class ShellStructure(TrellisGenerator):
    """Runs the real structure stage, then hands on a fixed shell instead of its result."""

    shell: torch.Tensor

    def sample_structure(self, cond: torch.Tensor, params: TrellisParams, noise: torch.Tensor,
                         *, on_step: Any = None) -> tuple[torch.Tensor, list[int]]:
        _, counts = super().sample_structure(cond, params, noise, on_step=on_step)
        return self.shell, counts


def framed_photo() -> np.ndarray:
    import skimage
    from PIL import Image

    path = os.path.join(os.path.dirname(skimage.__file__), "data", "chelsea.png")
    rgba = np.asarray(Image.open(path).convert("RGBA")).copy()
    h, w = rgba.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.35 * w)) ** 2 <= 1
    rgba[..., 3] = inside * 255
    return frame_trellis(rgba)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


@torch.inference_mode()
def run_stages(gen: ShellStructure, framed: np.ndarray, params: TrellisParams,
               seed: int) -> dict[str, float]:
    device = gen.device
    generator = torch.Generator().manual_seed(seed)
    cond, t_cond = timed(device, lambda: gen.encode_image(framed[..., :3]))
    noise = gen.structure_noise(params.num_oversamples, generator)
    (_, counts), t_ss = timed(device, lambda: gen.sample_structure(cond, params, noise))
    slat, t_slat = timed(device, lambda: gen.sample_latent(cond, gen.shell, params,
                                                           generator=generator))
    gaussians, t_gs = timed(device, lambda: to_service_gaussians(gen.decode_gaussians(slat)))
    return {"condition": t_cond, "structure (3 x 8 steps + decode)": t_ss,
            "latent (20 steps)": t_slat, "gaussians (decode + to numpy)": t_gs,
            "gaussians_count": float(len(gaussians)),
            "random_structure_voxels": float(statistics.median(counts))}


def profile_steps(gen: TrellisGenerator, framed: np.ndarray) -> None:
    from torch.profiler import ProfilerActivity, profile

    device = gen.device
    with torch.inference_mode():
        cond = gen.encode_image(framed[..., :3])
        flow = gen.models.ss_flow
        r = flow.resolution
        x = torch.randn(6, flow.in_channels, r, r, r, device=device)
        both = torch.cat([cond.expand(3, -1, -1), torch.zeros_like(cond).expand(3, -1, -1)])
        t = torch.full((6,), 900.0, device=device)
        from ai_engine.generators.trellis.sparse import SparseTensor, Structure

        structure = Structure(ShellStructure.shell).repeat(2)
        feats = torch.randn(structure.num_voxels, 8, device=device)
        pair = torch.cat([cond, torch.zeros_like(cond)])
        t2 = torch.full((2,), 900.0, device=device)
        gen.models.slat_flow(SparseTensor(feats, structure), t2, pair)
        for name, step in (("sparse-structure flow, one guided step (batch 6)",
                            lambda: flow(x, t, both)),
                           ("SLAT flow, one guided step (batch 2)",
                            lambda: gen.models.slat_flow(SparseTensor(feats, structure), t2,
                                                         pair))):
            step()
            sync(device)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                step()
                sync(device)
            print(f"\n== profile: {name}")
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=16,
                                            max_name_column_width=70))


@torch.inference_mode()
def consistency_check(device: torch.device, dtype: torch.dtype) -> None:
    """Each tiny network in ``dtype`` on ``device`` against float32 on the CPU (rel. L2 error)."""
    from ai_engine.generators.trellis.sparse import SparseTensor, Structure
    from tests.generators.trellis.tiny import TINY

    gen = torch.Generator().manual_seed(0)
    occupied = torch.rand(2, 16, 16, 16, generator=gen) < 0.2
    coords = torch.nonzero(occupied).int()
    cond = torch.randn(2, 1374, 32, generator=gen)
    t = torch.tensor([900.0, 300.0])
    inputs = {
        "ss_flow": lambda d: (torch.randn(2, 8, 4, 4, 4, generator=torch.Generator()
                                          .manual_seed(1)).to(d), t.to(d), cond.to(d)),
        "ss_decoder": lambda d: (torch.randn(2, 8, 4, 4, 4, generator=torch.Generator()
                                             .manual_seed(2)).to(d),),
        "slat_flow": lambda d: (SparseTensor(torch.randn(len(coords), 8, generator=torch
                                                         .Generator().manual_seed(3)).to(d),
                                             Structure(coords.to(d))), t.to(d), cond.to(d)),
        "gs_decoder": lambda d: (SparseTensor(torch.randn(len(coords), 8, generator=torch
                                                          .Generator().manual_seed(4)).to(d),
                                              Structure(coords.to(d))),),
    }
    for role, stem in STEMS.items():
        spec = TINY[stem]
        torch.manual_seed(5)
        ref_net = build_model(spec["name"], spec["args"]).eval()
        net = build_model(spec["name"], spec["args"]).eval()
        net.load_state_dict(ref_net.state_dict())
        net = net.to(device)
        net.set_compute_dtype(dtype)  # type: ignore[operator]
        ref = ref_net(*inputs[role](torch.device("cpu")))
        out = net(*inputs[role](device))
        ref_t = ref.feats if isinstance(ref, SparseTensor) else ref
        out_t = (out.feats if isinstance(out, SparseTensor) else out).float().cpu()
        error = float((out_t - ref_t).norm() / ref_t.norm())
        print(f"consistency {role:11s} {dtype} on {device.type} vs float32 cpu: "
              f"rel. L2 error {error:.2e} {'ok' if error < 2e-2 else 'TOO LARGE'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--voxels", type=int, nargs="+", default=[15000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny models (CPU smoke test)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-compile", action="store_true",
                        help="run the element-wise steps unfused (eagerly)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if device.type == "cuda" else torch.float32
    resolution = 16 if args.tiny else 64
    if device.type == "cuda" and not args.no_compile:
        fused.enable_compilation()

    consistency_check(device, dtype)
    started = time.perf_counter()
    models = build(device, dtype, tiny=args.tiny)
    gen = ShellStructure(models, read_pipeline_config(PUBLISHED), device=device)
    _, warmup_s = timed(device, gen.warmup)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          f"torch {torch.__version__}; trunk dtype {dtype}; built and warmed up in "
          f"{time.perf_counter() - started:.1f} s (warm-up {warmup_s:.1f} s, compiled "
          f"element-wise kernels: {fused.compilation_enabled()})")
    for role in STEMS:
        net = getattr(models, role)
        params = sum(p.numel() for p in net.parameters())
        print(f"parameters {role:11s} {params / 1e6:8.2f} M")
    dino_params = sum(p.numel() for p in models.conditioner.model.parameters())
    print(f"parameters dinov2      {dino_params / 1e6:8.2f} M")

    framed = framed_photo()
    params = TrellisParams()
    for voxels in args.voxels:
        ShellStructure.shell = shell_coords(min(voxels, resolution ** 3 // 4), resolution, device)
        run_stages(gen, framed, params, seed=0)  # warm-up at this size
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        runs = [run_stages(gen, framed, params, seed=i + 1) for i in range(args.repeats)]
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        def end_to_end(first_seed: int) -> list[float]:
            times = []
            for seed in range(first_seed, first_seed + args.repeats):
                sync(device)
                start = time.perf_counter()
                gen(framed, params=params, seed=seed, on_progress=lambda f: None)
                sync(device)
                times.append(time.perf_counter() - start)
            return times

        e2e = end_to_end(100)
        graphs = gen.use_cuda_graphs
        gen.use_cuda_graphs = False
        eager = end_to_end(200)
        gen.use_cuda_graphs = graphs
        print(f"\n== {ShellStructure.shell.shape[0]} voxels (shell), "
              f"{int(runs[0]['gaussians_count'])} Gaussians; random structures had "
              f"~{int(runs[0]['random_structure_voxels'])} voxels (replaced)")
        total = 0.0
        for key in runs[0]:
            if key.endswith(("_count", "_voxels")):
                continue
            median = statistics.median(run[key] for run in runs)
            total += median
            print(f"  {key:36s} {median * 1000:8.1f} ms")
        print(f"  {'sum of stages':36s} {total * 1000:8.1f} ms")
        for label, times in ((f"end to end generator(framed){' *' if graphs else ''}", e2e),
                             ("end to end, no CUDA graphs", eager)):
            print(f"  {label:36s} {statistics.median(times) * 1000:8.1f} ms"
                  f"  (runs: {', '.join(f'{s * 1000:.0f}' for s in times)})")
        print(f"  peak GPU memory allocated            {peak:8.2f} GiB")
    if args.profile:
        profile_steps(gen, framed)


if __name__ == "__main__":
    main()
