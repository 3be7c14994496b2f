"""Volume decoding and marching cubes speed: dense vs hierarchical, CPU vs GPU.

    python benchmarks/bench_volume.py --part cpu            # analytic field, numpy, CPU
    python benchmarks/bench_volume.py --part gpu            # Hunyuan3D-2-sized decoder, CUDA

The shape is a chair (boxes and thin legs, analytic SDF) so the surface is realistic.
On the GPU the field is a randomly initialised cross-attention geo-decoder of Hunyuan3D-2's
ShapeVAE size (width 1024, 16 heads, 3072 latent tokens, Fourier point embedding with 8
frequencies, qk-norm, MLP x4; keys and values of the latents computed once per shape) whose
output is added, scaled down, to the chair's logits: the cost is the decoder's, the surface
the chair's. Prints one table per part.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai_engine.geometry.marching import marching_cubes, marching_cubes_torch
from ai_engine.geometry.volume import (
    chamfer_distance,
    decode_dense,
    decode_hierarchical,
)

MC_LEVEL = -1 / 512
BOUNDS = 1.01


# -- the shape: backend-agnostic arithmetic only (works on numpy arrays and torch tensors) --

def _relu(x: Any) -> Any:
    return (x + abs(x)) * 0.5


def _min(a: Any, b: Any) -> Any:
    return (a + b - abs(a - b)) * 0.5


def _max(a: Any, b: Any) -> Any:
    return (a + b + abs(a - b)) * 0.5


def _box(p: Any, centre: tuple[float, float, float], half: tuple[float, float, float],
         round_by: float = 0.02) -> Any:
    q = [abs(p[:, i] - centre[i]) - (half[i] - round_by) for i in range(3)]
    outside = (_relu(q[0]) ** 2 + _relu(q[1]) ** 2 + _relu(q[2]) ** 2) ** 0.5
    return outside - _relu(-_max(q[0], _max(q[1], q[2]))) - round_by


def _leg(p: Any, x: float, z: float) -> Any:
    radial = ((p[:, 0] - x) ** 2 + (p[:, 2] - z) ** 2) ** 0.5 - 0.045
    height = abs(p[:, 1] + 0.45) - 0.45
    return (_relu(radial) ** 2 + _relu(height) ** 2) ** 0.5 - _relu(-_max(radial, height))


def chair_sdf(p: Any) -> Any:
    d = _box(p, (0.0, 0.0, 0.0), (0.45, 0.05, 0.45))
    d = _min(d, _box(p, (0.0, 0.47, -0.40), (0.45, 0.42, 0.05)))
    d = _min(d, _box(p, (0.0, 0.86, -0.40), (0.50, 0.04, 0.07)))  # top rail
    for x in (-0.38, 0.38):
        for z in (-0.38, 0.38):
            d = _min(d, _leg(p, x, z))
    return d


def chair_logits(p: Any) -> Any:
    """Occupancy-like logits: positive inside, saturating away from the surface."""
    x = -16.0 * chair_sdf(p)
    return x / (1.0 + abs(x))


# -- timing -------------------------------------------------------------------------------

def timed(fn: Callable[[], Any], *, repeat: int, sync: Callable[[], None]) -> tuple[float, Any]:
    """Median wall time in ms over ``repeat`` runs (after the caller's warm-up) and the last
    result; ``sync`` waits for the device before each clock read."""
    times, result = [], None
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


def row(*cells: object) -> str:
    return " | ".join(str(c) for c in cells)


# -- part (a): analytic field on the CPU ---------------------------------------------------

def bench_cpu(resolutions: list[int], base: int) -> None:
    import torch

    print(f"## CPU, analytic chair field (numpy), {torch.get_num_threads()} torch threads")
    print(row("R", "dense decode ms", "hier decode ms", "queries", "dense queries",
              "fewer x", "chamfer/voxel", "MC skimage ms", "MC torch-cpu ms", "faces"))
    def none() -> None:
        return None

    for r in resolutions:
        def dense_decode(r: int = r) -> Any:
            return decode_dense(chair_logits, resolution=r)

        def hier_decode(r: int = r) -> Any:
            return decode_hierarchical(chair_logits, resolution=r, mc_level=MC_LEVEL,
                                       base_resolution=base)

        t_dense, dense = timed(dense_decode, repeat=1, sync=none)
        t_hier, (grid, stats) = timed(hier_decode, repeat=1, sync=none)

        def cpu_surface(g: Any = grid) -> Any:
            return marching_cubes(g, level=MC_LEVEL, bounds=BOUNDS)

        tgrid = torch.from_numpy(grid)

        def torch_surface(g: Any = tgrid) -> Any:
            return marching_cubes_torch(g, level=MC_LEVEL, bounds=BOUNDS)

        t_sk, mesh = timed(cpu_surface, repeat=1, sync=none)
        t_tc, _ = timed(torch_surface, repeat=1, sync=none)
        ref = marching_cubes(dense, level=MC_LEVEL, bounds=BOUNDS)
        ch = chamfer_distance(ref.vertices, mesh.vertices) / (2 * BOUNDS / r)
        print(row(r, f"{t_dense:.0f}", f"{t_hier:.0f}", stats.queries, stats.dense_queries,
                  f"{stats.reduction:.1f}", f"{ch:.2e}", f"{t_sk:.0f}", f"{t_tc:.0f}",
                  len(mesh.faces)))


# -- part (b): Hunyuan3D-2-sized geo-decoder on the GPU -------------------------------------

def make_decoder(device: str, *, width: int = 1024, heads: int = 16, tokens: int = 3072,
                 num_freqs: int = 8, seed: int = 0) -> Callable[[Any], Any]:
    """A random-weight cross-attention occupancy decoder of Hunyuan3D-2's geo-decoder size.

    Per query point: Fourier embedding (x, sin 2^k x, cos 2^k x; 51 dims) -> linear to
    ``width`` -> one residual cross-attention block over ``tokens`` latents (pre-LN, qk
    LayerNorm per head, no qkv bias) -> residual MLP (4x, GELU) -> LayerNorm -> linear to 1.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(seed)
    dt = torch.bfloat16
    head_dim = width // heads
    embed_dim = 3 * (1 + 2 * num_freqs)
    mods = nn.ModuleDict({
        "query_proj": nn.Linear(embed_dim, width), "ln_1": nn.LayerNorm(width),
        "ln_2": nn.LayerNorm(width), "c_q": nn.Linear(width, width, bias=False),
        "c_kv": nn.Linear(width, 2 * width, bias=False), "q_norm": nn.LayerNorm(head_dim),
        "k_norm": nn.LayerNorm(head_dim), "c_proj": nn.Linear(width, width),
        "ln_3": nn.LayerNorm(width), "fc": nn.Linear(width, 4 * width),
        "proj": nn.Linear(4 * width, width), "ln_post": nn.LayerNorm(width),
        "out": nn.Linear(width, 1)}).to(device=device, dtype=dt).eval()
    freqs = (2.0 ** torch.arange(num_freqs, device=device)).to(torch.float32)
    with torch.inference_mode():
        latents = torch.randn(1, tokens, width, device=device, dtype=dt)
        kv = mods["c_kv"](mods["ln_2"](latents)).view(1, tokens, 2, heads, head_dim)
        k = mods["k_norm"](kv[:, :, 0]).transpose(1, 2).contiguous()
        v = kv[:, :, 1].transpose(1, 2).contiguous()

    def decoder(points: Any) -> Any:
        x = points.to(torch.float32)
        angles = (x[..., None] * freqs).flatten(-2)
        emb = torch.cat([x, angles.sin(), angles.cos()], -1).to(dt)
        h = mods["query_proj"](emb)[None]
        n = h.shape[1]
        q = mods["q_norm"](mods["c_q"](mods["ln_1"](h)).view(1, n, heads, head_dim))
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k, v)
        h = h + mods["c_proj"](att.transpose(1, 2).reshape(1, n, width))
        h = h + mods["proj"](F.gelu(mods["fc"](mods["ln_3"](h))))
        return mods["out"](mods["ln_post"](h))[0, :, 0].float()

    return decoder


def gpu_flops_per_point(width: int = 1024, tokens: int = 3072, embed: int = 51) -> float:
    return 2.0 * (embed * width + 2 * width * width + 2 * tokens * width + 8 * width * width)


def bench_gpu(resolutions: list[int], bases: list[int], repeat: int, device: str) -> None:
    import torch

    on_cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    decoder = make_decoder(device)

    def field(p: Any) -> Any:
        return chair_logits(p) + 0.02 * torch.tanh(decoder(p))

    name = torch.cuda.get_device_name() if on_cuda else "cpu (smoke run)"
    print(f"## GPU {name}, torch {torch.__version__}, decoder bf16 "
          f"({gpu_flops_per_point() / 1e6:.1f} MFLOP per query)")
    with torch.inference_mode():
        decode_hierarchical(field, resolution=min(resolutions), mc_level=MC_LEVEL,
                            base_resolution=min(bases), device=device)  # warm-up
        t_q, _ = timed(lambda: field(torch.rand(1 << 18, 3, device=device) * 2 - 1),
                       repeat=repeat, sync=sync)
        rate = (1 << 18) * gpu_flops_per_point() / (t_q * 1e-3) / 1e12
        print(f"decoder alone: 262144 queries in {t_q:.1f} ms = {262144 / t_q / 1e3:.1f} "
              f"M queries/s, {rate:.0f} TFLOP/s")
        print(row("R", "base", "dense decode ms", "hier decode ms", "MC gpu ms",
                  "decode+surface ms", "queries", "rounds", "dense queries", "fewer x",
                  "chamfer/voxel vs dense", "MC skimage ms", "faces"))
        for r in resolutions:
            def dense_decode(r: int = r) -> Any:
                return decode_dense(field, resolution=r, device=device)

            t_dense, dense = timed(dense_decode, repeat=1, sync=sync)
            ref = marching_cubes_torch(dense, level=MC_LEVEL, bounds=BOUNDS)
            dense_cpu = dense.cpu().numpy()
            del dense
            def cpu_surface(g: Any = dense_cpu) -> Any:
                return marching_cubes(g, level=MC_LEVEL, bounds=BOUNDS)

            t_sk, sk = timed(cpu_surface, repeat=1, sync=sync)
            same = chamfer_distance(sk.vertices, ref.vertices) / (2 * BOUNDS / r)
            print(f"R={r}: torch MC vs skimage on the dense grid: {len(ref.vertices)} vs "
                  f"{len(sk.vertices)} vertices, chamfer {same:.1e} voxel")
            for base in bases:
                def hier(r: int = r, base: int = base) -> Any:
                    return decode_hierarchical(field, resolution=r, mc_level=MC_LEVEL,
                                               base_resolution=base, device=device)

                def both(hier: Callable[[], Any] = hier) -> Any:
                    grid, _ = hier()
                    return marching_cubes_torch(grid, level=MC_LEVEL, bounds=BOUNDS)

                t_h, (grid, stats) = timed(hier, repeat=repeat, sync=sync)
                def surface(g: Any = grid) -> Any:
                    return marching_cubes_torch(g, level=MC_LEVEL, bounds=BOUNDS)

                t_mc, mesh = timed(surface, repeat=repeat, sync=sync)
                t_all, _ = timed(both, repeat=repeat, sync=sync)
                ch = chamfer_distance(ref.vertices, mesh.vertices) / (2 * BOUNDS / r)
                print(row(r, base, f"{t_dense:.0f}", f"{t_h:.1f}", f"{t_mc:.1f}", f"{t_all:.1f}",
                          stats.queries, "/".join(map(str, stats.passes_per_level)),
                          stats.dense_queries, f"{stats.reduction:.1f}",
                          f"{ch:.1e}", f"{t_sk:.0f}", len(mesh.faces)))
                spent: list[float] = []

                def clocked(p: Any, spent: list[float] = spent) -> Any:
                    sync()
                    start = time.perf_counter()
                    out = field(p)
                    sync()
                    spent.append((time.perf_counter() - start) * 1e3)
                    return out

                def split(r: int = r, base: int = base, clocked: Any = clocked) -> Any:
                    return decode_hierarchical(clocked, resolution=r, mc_level=MC_LEVEL,
                                               base_resolution=base, device=device)

                t_split, _ = timed(split, repeat=1, sync=sync)
                print(f"   R={r} base={base}: {len(spent)} field calls took {sum(spent):.1f} ms "
                      f"of {t_split:.1f} ms (the rest: grid work and launches)")
            del grid
            if on_cuda:
                torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["cpu", "gpu", "both"], default="cpu")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 384])
    parser.add_argument("--bases", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cuda", help="torch device of the GPU part")
    args = parser.parse_args()
    if args.part in ("cpu", "both"):
        bench_cpu(args.resolutions, args.bases[0])
    if args.part in ("gpu", "both"):
        bench_gpu(args.resolutions, args.bases, args.repeat, args.device)


if __name__ == "__main__":
    main()
