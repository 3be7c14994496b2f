"""The Hunyuan3D-2 shape chain, step by step, on hy3dgen's models.

1. DINOv2 tokens of the framed image (zeros as the unconditional tokens).
2. Flow-matching sampling of latents ``[1, num_latents, 64]`` from seeded
   noise with hy3dgen's scheduler; classifier-free guidance doubles the batch,
   guidance-distilled DiTs (``-fast``, ``-turbo``) take the scale through their
   guidance embedding instead.
3. Latents divided by ``vae.scale_factor``, then ``vae(latents)`` (post-KL
   linear and transformer): the tokens the geo-decoder attends to.
4. The geo-decoder as an occupancy field, decoded on the lattice over
   ``[-1.01, 1.01]^3`` by :mod:`ai_engine.geometry.volume` (hierarchical by
   default; with adaptive KV selection for the FlashVDM decoder).
5. Marching cubes at ``mc_level = -1/512`` (the decoder's calibrated
   iso-level; 0 leaves flat planes) by :mod:`ai_engine.geometry.marching`.

The numerics of steps 1-3 follow hy3dgen's ``Hunyuan3DDiTFlowMatchingPipeline``
(same casts, timestep scaling and noise draw), so both give the same latents
for the same weights and seed. hy3dgen's schedule ends with a step of size
zero (its sigmas run ``linspace(0, 1, steps)`` then 1 again); that step's DiT
call is skipped here, which changes nothing but time.

Orientation: hy3dgen's lattice axes are the mesh axes, and its meshes are
already in the service convention (Y up, the object's front towards +Z, image
right = +X): hy3dgen's texture baker places the front (input) view's camera
on the mesh's +Z axis with +X to its right. No rotation is applied.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai_engine.errors import GenerateError, InvalidInput, SetupError
from ai_engine.generators.base import RGBA
from ai_engine.generators.hunyuan3d.conditioner import ImageConditioner
from ai_engine.generators.hunyuan3d.field import GeoDecoderField
from ai_engine.generators.hunyuan3d.layout import VARIANTS, find_variant
from ai_engine.generators.hunyuan3d.weights import VariantModels, load_variant
from ai_engine.geometry import volume
from ai_engine.geometry.marching import marching_cubes
from ai_engine.geometry.types import Mesh

logger = logging.getLogger(__name__)

BOUNDS = 1.01
MC_LEVEL = -1.0 / 512.0
#: Adaptive KV selection: lattice regions per axis, and the subsampling of each
#: region's queries for its mean (the fastest setting measured on an H100).
KV_REGIONS_PER_AXIS = 4
KV_MEAN_STRIDE = 8

StepFn = Callable[[int, int], None]


@dataclass(frozen=True)
class SurfacePlan:
    """How to turn decoded latents into a surface."""

    resolution: int
    chunk_size: int
    hierarchical: bool = True
    adaptive_kv: bool = False
    base_resolution: int = 64
    """Coarsest hierarchical level (decoded densely): the thinnest part it resolves."""


@dataclass
class ChainResult:
    mesh: Mesh
    timings_s: dict[str, float] = field(default_factory=dict)
    queries: int = 0


class Hunyuan3DPipeline:
    """Loaded variants on one device; :meth:`run` turns one framed image into a mesh.

    Not thread-safe (schedulers keep per-run state): one caller thread per device.
    """

    mc_level = MC_LEVEL

    def __init__(self, variants: dict[str, VariantModels], *, device: torch.device,
                 dtype: torch.dtype) -> None:
        if not variants:
            raise SetupError("no Hunyuan3D-2 variant is loaded", code="setup.missing_weights")
        self.variants = variants
        self.device = device
        self.dtype = dtype
        #: SDPA backends for the DiT, in priority order (names of
        #: ``torch.nn.attention.SDPBackend``); None leaves PyTorch's own choice.
        self.dit_attention: tuple[str, ...] | None = None

    @classmethod
    def from_models_dir(cls, models_dir: Path, *, device: str | torch.device,
                        dtype: torch.dtype | None = None,
                        variants: tuple[str, ...] | None = None) -> Hunyuan3DPipeline:
        """Load every variant found under ``models_dir`` (or only ``variants``).

        ``dtype`` defaults to float16 on CUDA (as hy3dgen runs) and float32 elsewhere.
        """
        dev = torch.device(device)
        dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
        loaded: dict[str, VariantModels] = {}
        conditioners: list[ImageConditioner] = []
        missing: list[str] = []
        for name in variants or VARIANTS:
            files = find_variant(Path(models_dir), name)  # type: ignore[arg-type]
            if files.location is None:
                missing.extend(files.missing)
                continue
            models = load_variant(files.location, device=dev, dtype=dtype,
                                  shared_conditioners=conditioners)
            if all(models.conditioner is not c for c in conditioners):
                conditioners.append(models.conditioner)
            loaded[name] = models
        if not loaded:
            raise SetupError(f"no Hunyuan3D-2 weights under {models_dir}: missing "
                             f"{', '.join(missing)}", code="setup.missing_weights")
        return cls(loaded, device=dev, dtype=dtype)

    def compile_dits(self) -> None:
        """Compile every variant's DiT with ``torch.compile`` (fuses its many
        elementwise kernels: 75 -> 44 ms per batch-2 forward on an H100). The
        compilation itself runs at the first call, i.e. in :meth:`warm_up`, about
        a minute per variant."""
        for models in self.variants.values():
            models.dit = torch.compile(models.dit, dynamic=False)

    def models(self, variant: str) -> VariantModels:
        try:
            return self.variants[variant]
        except KeyError:
            raise InvalidInput(f"Hunyuan3D-2 variant {variant!r} is not installed here "
                               f"(installed: {', '.join(self.variants)})",
                               code="input.variant_unavailable") from None

    # -- 1. conditioning ----------------------------------------------------------------
    def image_tensor(self, framed: RGBA, *, size_px: int) -> torch.Tensor:
        """A framed image (RGB already composited on white) as ``[1, 3, S, S]`` in [-1, 1]."""
        rgb = np.array(framed[..., :3], dtype=np.uint8)
        if rgb.shape[0] != size_px or rgb.shape[1] != size_px:
            from PIL import Image

            rgb = np.array(Image.fromarray(rgb).resize((size_px, size_px),
                                                       Image.Resampling.BICUBIC))
        image = torch.from_numpy(rgb).to(self.device, torch.float32)
        return (image / 255.0 * 2.0 - 1.0).permute(2, 0, 1)[None]

    def encode(self, models: VariantModels, image: torch.Tensor, *,
               cfg: bool) -> dict[str, torch.Tensor]:
        cond = models.conditioner(image)
        if cfg:
            uncond = models.conditioner.unconditional_embedding(image.shape[0])
            cond = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
        return {k: v.to(self.dtype) for k, v in cond.items()}

    # -- 2. sampling --------------------------------------------------------------------
    def sample(self, models: VariantModels, cond: dict[str, torch.Tensor], *, steps: int,
               guidance: float, seed: int, cfg: bool,
               on_step: StepFn | None = None) -> torch.Tensor:
        """Latents ``[1, num_latents, C]`` by flow matching from seeded noise."""
        scheduler = models.scheduler
        scheduler.set_timesteps(sigmas=np.linspace(0, 1, steps), device=self.device)
        sigmas = getattr(scheduler, "sigmas_", None)
        sigmas = scheduler.sigmas if sigmas is None else sigmas
        zero_step = (sigmas[1:] == sigmas[:-1]).tolist()
        # Noise from a CPU generator: the same seed gives the same shape on any device.
        generator = torch.Generator("cpu").manual_seed(int(seed))
        latents = torch.randn((1, *models.vae.latent_shape), generator=generator,
                              dtype=self.dtype).to(self.device)
        guidance_in = None
        if models.guidance_distilled:
            guidance_in = torch.tensor([guidance], device=self.device, dtype=self.dtype)
        train_steps = scheduler.config.num_train_timesteps
        timesteps = scheduler.timesteps
        with self._dit_attention():
            for i, t in enumerate(timesteps):
                latents = self._step(models, cond, latents, t, zero_step=zero_step[i],
                                     cfg=cfg, guidance=guidance, guidance_in=guidance_in,
                                     train_steps=train_steps)
                if on_step is not None:
                    on_step(i + 1, len(timesteps))
        return latents

    def _step(self, models: VariantModels, cond: dict[str, torch.Tensor],
              latents: torch.Tensor, t: torch.Tensor, *, zero_step: bool, cfg: bool,
              guidance: float, guidance_in: torch.Tensor | None,
              train_steps: int) -> torch.Tensor:
        if zero_step:  # hy3dgen's closing step of size zero: nothing to compute
            noise_pred = torch.zeros_like(latents)
        else:
            model_in = torch.cat([latents, latents]) if cfg else latents
            timestep = t.expand(model_in.shape[0]).to(latents.dtype) / train_steps
            noise_pred = models.dit(model_in, timestep, cond, guidance=guidance_in)
            if cfg:
                cond_pred, uncond_pred = noise_pred.chunk(2)
                noise_pred = uncond_pred + guidance * (cond_pred - uncond_pred)
        stepped: torch.Tensor = models.scheduler.step(noise_pred, t, latents).prev_sample
        return stepped

    def _dit_attention(self) -> contextlib.AbstractContextManager[Any]:
        if not self.dit_attention:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = [getattr(SDPBackend, name) for name in self.dit_attention]
        return sdpa_kernel(backends, set_priority=True)

    # -- 3. VAE ----------------------------------------------------------------------------
    def decode_latents(self, models: VariantModels, latents: torch.Tensor) -> torch.Tensor:
        """Unscale, then the VAE's post-KL projection and transformer."""
        # Written as hy3dgen writes it ((1/s) * x, not x / s): bit-identical latents.
        decoded: torch.Tensor = models.vae((1.0 / models.vae.scale_factor) * latents)
        return decoded

    # -- 4 and 5. volume decoding and surface ---------------------------------------------
    def surface(self, models: VariantModels, decoded: torch.Tensor,
                plan: SurfacePlan) -> tuple[Mesh, int]:
        """Mesh of the decoded shape and the number of field queries it took."""
        regions = KV_REGIONS_PER_AXIS if plan.adaptive_kv else None
        occupancy = GeoDecoderField(models.vae, decoded, bounds=BOUNDS,
                                    regions_per_axis=regions, mean_stride=KV_MEAN_STRIDE)
        if plan.hierarchical:
            grid, _stats = volume.decode_hierarchical(
                occupancy, resolution=plan.resolution, mc_level=self.mc_level, bounds=BOUNDS,
                base_resolution=plan.base_resolution, chunk_size=plan.chunk_size,
                device=self.device)
        else:
            grid = volume.decode_dense(occupancy, resolution=plan.resolution, bounds=BOUNDS,
                                       chunk_size=plan.chunk_size, device=self.device)
        if not bool(torch.isfinite(grid).all()):
            raise GenerateError("the shape decoder produced non-finite values",
                                code="generate.non_finite")
        if self.device.type == "cpu":  # scikit-image's Lewiner beats torch on a CPU
            grid = grid.numpy()
        mesh = marching_cubes(grid, level=self.mc_level, bounds=BOUNDS)
        return mesh, occupancy.evaluated_points

    # -- the whole chain -----------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, framed: RGBA, *, variant: str, steps: int, guidance: float, seed: int,
            plan: SurfacePlan, on_step: StepFn | None = None) -> ChainResult:
        models = self.models(variant)
        # Always the doubled batch for CFG models (even at guidance 1): one input shape
        # per variant, so a compiled DiT never recompiles at job time.
        cfg = not models.guidance_distilled
        timer = _StageTimer(self.device)
        image = self.image_tensor(framed, size_px=models.image_size_px)
        cond = self.encode(models, image, cfg=cfg)
        timer.lap("conditioning")
        latents = self.sample(models, cond, steps=steps, guidance=guidance, seed=seed, cfg=cfg,
                              on_step=on_step)
        timer.lap("sampling")
        decoded = self.decode_latents(models, latents)
        timer.lap("vae")
        mesh, queries = self.surface(models, decoded, plan)
        timer.lap("surface")
        if mesh.is_empty:
            raise GenerateError("no surface: the decoded occupancy never crosses the iso-level",
                                code="generate.empty_mesh")
        return ChainResult(mesh, timer.laps, queries)

    def warm_up(self) -> None:
        """Run every loaded variant once on a small input (kernels, allocator, handles)."""
        framed = np.full((64, 64, 4), 255, np.uint8)
        framed[16:48, 16:48, :3] = 96
        for name, models in self.variants.items():
            plan = SurfacePlan(resolution=32, chunk_size=1 << 15,
                               adaptive_kv=models.flash_decoder)
            # An empty warm-up shape is fine: every stage has run.
            with contextlib.suppress(GenerateError):
                self.run(framed, variant=name, steps=2, guidance=5.0, seed=0, plan=plan)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class _StageTimer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now


def describe(models: VariantModels) -> dict[str, Any]:
    """What a loaded variant is, for logs and ``info``."""
    return {"variant": models.variant, "layout": models.location.layout,
            "weights": str(models.location.weights),
            "guidance_distilled": models.guidance_distilled,
            "flash_decoder": models.flash_decoder}
