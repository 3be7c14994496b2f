"""The ``trellis`` generator: Microsoft TRELLIS image-large, framed image → Gaussian splats.

Weights (nothing is downloaded):

* ``MODELS_DIR/trellis-image-large/`` — the published folder (``pipeline.json``,
  ``ckpts/*.json`` and ``ckpts/*.safetensors``); see :mod:`.loading`;
* ``MODELS_DIR/dinov2-vitl14-reg/`` — DINOv2 ViT-L/14 with registers in the
  ``transformers`` format; see :mod:`.conditioner`.

One call, after :meth:`TrellisGenerator.frame`:

1. DINOv2 tokens of the framed image (negative condition: zeros).
2. ``num_oversamples`` sparse structures at once: Euler flow sampling of
   ``[n, 8, 16³]`` noise, decoded to 64³ occupancy (logit > 0); the structure
   with the fewest occupied voxels is kept.
3. The structured latent on those voxels: Euler flow sampling of ``[N, 8]``
   noise, then un-normalised with the published mean and std.
4. The Gaussian decoder: 32 Gaussians per voxel.
5. Conversion to the service frame. TRELLIS works in Blender's frame (Z up,
   the object's front towards -Y): the assets it learnt from are glTF files
   imported into Blender. The rotation by -90° about X, ``(x, y, z) → (x, z, -y)``
   (quaternion ``(√½, -√½, 0, 0)``), is the glTF exporter's and TRELLIS's own GLB
   export's, and gives Y up with the front towards +Z.

Noise comes from a ``torch.Generator`` on the CPU seeded per job, so a seed
gives the same noise on any device and never touches global RNG state (CUDA
kernels with atomics may still differ in the last bits between runs).
Classifier-free guidance runs the conditional and unconditional passes as one
batch. On CUDA the trunks run in float16 as published, the blocks' element-wise
steps are fused by ``torch.compile`` (:mod:`.fused`) and the structured-latent
flow is replayed as a CUDA graph within a job (:mod:`.graphs`): on a slow host
CPU, launching its kernels one by one takes longer than running them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from ai_engine.errors import GenerateError
from ai_engine.generators.base import RGBA, GeneratorOutput, ProgressFn
from ai_engine.generators.trellis import fused
from ai_engine.generators.trellis.conditioner import DINOV2_FOLDER, ImageConditioner
from ai_engine.generators.trellis.graphs import GraphedCall
from ai_engine.generators.trellis.gs_decoder import GaussianTensors, SLatGaussianDecoder
from ai_engine.generators.trellis.loading import (
    TRELLIS_FOLDER,
    PipelineConfig,
    checkpoint_paths,
    load_model,
    read_pipeline_config,
)
from ai_engine.generators.trellis.sampler import FlowSettings, euler_sample
from ai_engine.generators.trellis.slat_flow import SLatFlowModel
from ai_engine.generators.trellis.sparse import SparseTensor, Structure
from ai_engine.generators.trellis.ss_decoder import SparseStructureDecoder
from ai_engine.generators.trellis.ss_flow import SparseStructureFlowModel
from ai_engine.geometry.types import Gaussians
from ai_engine.imaging.frame import frame_trellis

log = logging.getLogger(__name__)

Interval = tuple[float, float]

# TRELLIS frame → service frame: (x, y, z) → (x, z, -y), a rotation by -90° about X.
_TO_SERVICE = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=np.float32)
_TO_SERVICE_QUAT = (math.sqrt(0.5), -math.sqrt(0.5), 0.0, 0.0)


class TrellisParams(BaseModel):
    """Overrides a request may give the ``trellis`` generator (defaults: the pipeline service's)."""

    model_config = ConfigDict(extra="forbid")

    ss_steps: int = Field(default=8, ge=1, le=100, description="sparse-structure sampling steps")
    ss_cfg: float = Field(default=5.75, ge=0.0, le=50.0, description="sparse-structure guidance")
    ss_cfg_interval: Interval = Field(default=(0.5, 1.0), description="flow times [lo, hi] where "
                                      "sparse-structure guidance applies")
    ss_rescale_t: float = Field(default=3.0, gt=0.0, le=100.0,
                                description="sparse-structure timestep rescale")
    slat_steps: int = Field(default=20, ge=1, le=100,
                            description="structured-latent sampling steps")
    slat_cfg: float = Field(default=2.4, ge=0.0, le=50.0, description="structured-latent guidance")
    slat_cfg_interval: Interval = Field(default=(0.5, 1.0), description="flow times [lo, hi] where "
                                        "structured-latent guidance applies")
    slat_rescale_t: float = Field(default=3.0, gt=0.0, le=100.0,
                                  description="structured-latent timestep rescale")
    num_oversamples: int = Field(default=3, ge=1, le=8, description="structures sampled; the one "
                                 "with the fewest occupied voxels is kept")

    @model_validator(mode="after")
    def _intervals(self) -> TrellisParams:
        for name in ("ss_cfg_interval", "slat_cfg_interval"):
            low, high = getattr(self, name)
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"{name} must satisfy 0 <= lo <= hi <= 1")
        return self

    def ss_settings(self, sigma_min: float) -> FlowSettings:
        return FlowSettings(self.ss_steps, self.ss_cfg, self.ss_cfg_interval,
                            self.ss_rescale_t, sigma_min)

    def slat_settings(self, sigma_min: float) -> FlowSettings:
        return FlowSettings(self.slat_steps, self.slat_cfg, self.slat_cfg_interval,
                            self.slat_rescale_t, sigma_min)


@dataclass
class TrellisModels:
    """The loaded networks of one pipeline."""

    conditioner: ImageConditioner
    ss_flow: SparseStructureFlowModel
    ss_decoder: SparseStructureDecoder
    slat_flow: SLatFlowModel
    gs_decoder: SLatGaussianDecoder


class _Progress:
    """Turns finished units of work into the 0..1 fraction ``on_progress`` expects."""

    def __init__(self, on_progress: ProgressFn, total: int) -> None:
        self.on_progress = on_progress
        self.total = max(1, total)
        self.done = 0

    def advance(self, _: int = 0) -> None:
        self.done += 1
        self.on_progress(min(1.0, self.done / self.total))


class TrellisGenerator:
    """TRELLIS image-large in plain PyTorch: one framed image → Gaussians."""

    name: ClassVar[str] = "trellis"
    native: ClassVar[Literal["mesh", "splat"]] = "splat"
    Params: ClassVar[type[BaseModel]] = TrellisParams

    def __init__(self, models: TrellisModels, config: PipelineConfig, *,
                 device: torch.device) -> None:
        self.models = models
        self.config = config
        self.device = device
        #: Replay the structured-latent flow as a CUDA graph within a job (:mod:`.graphs`).
        self.use_cuda_graphs = device.type == "cuda"

    @classmethod
    def load(cls, *, models_dir: Path, device: str, dinov2_dir: Path | None = None,
             dtype: torch.dtype | None = None, warmup: bool | None = None,
             compile_kernels: bool | None = None) -> TrellisGenerator:
        """Load the published weights from ``models_dir`` onto ``device``.

        ``dtype`` is the transformer trunks' compute dtype: float16 (as published)
        on CUDA by default, float32 on the CPU. ``compile_kernels`` (default: on
        CUDA) fuses the blocks' element-wise steps with ``torch.compile``
        (:mod:`.fused`). ``warmup`` (default: on CUDA) runs every network once on
        small inputs so the first job pays no start-up or compilation costs.
        """
        torch_device = torch.device(device)
        on_gpu = torch_device.type == "cuda"
        if dtype is None:
            dtype = torch.float16 if on_gpu else torch.float32
        if compile_kernels if compile_kernels is not None else on_gpu:
            fused.enable_compilation()
        root = Path(models_dir) / TRELLIS_FOLDER
        config = read_pipeline_config(root)
        paths = checkpoint_paths(root, config)

        def trunk(role: str) -> Any:
            folder, stem = paths[role]
            return load_model(folder, stem, device=torch_device, dtype=dtype)

        conditioner = ImageConditioner.load(Path(dinov2_dir or Path(models_dir) / DINOV2_FOLDER),
                                            device=torch_device)
        models = TrellisModels(conditioner=conditioner,
                               ss_flow=trunk("sparse_structure_flow_model"),
                               ss_decoder=trunk("sparse_structure_decoder"),
                               slat_flow=trunk("slat_flow_model"),
                               gs_decoder=trunk("slat_decoder_gs"))
        generator = cls(models, config, device=torch_device)
        if warmup if warmup is not None else on_gpu:
            generator.warmup()
        return generator

    def frame(self, cutout: RGBA) -> RGBA:
        """Square crop 1.2× the box of alpha > 0.8, 518², RGB premultiplied on black."""
        return frame_trellis(cutout)

    # -- the call ---------------------------------------------------------

    @torch.inference_mode()
    def __call__(self, framed: RGBA, *, params: BaseModel, seed: int,
                 on_progress: ProgressFn) -> GeneratorOutput:
        if not isinstance(params, TrellisParams):
            params = TrellisParams.model_validate(params.model_dump())
        framed = np.asarray(framed)
        if framed.ndim != 3 or framed.shape[2] not in (3, 4):
            raise GenerateError(f"expected a framed RGB(A) image, got {framed.shape}",
                                code="generate.bad_input")
        progress = _Progress(on_progress, 3 + params.ss_steps + params.slat_steps)
        generator = torch.Generator(device="cpu").manual_seed(seed % (1 << 64))
        timings: dict[str, float] = {}

        # 1. Conditioning tokens (RGB is already premultiplied by frame()).
        started = time.perf_counter()
        cond = self.encode_image(np.ascontiguousarray(framed[..., :3]))
        progress.advance()
        timings["condition_s"] = time.perf_counter() - started

        # 2. Sparse structures, keep the smallest.
        started = time.perf_counter()
        noise = self.structure_noise(params.num_oversamples, generator)
        coords, counts = self.sample_structure(cond, params, noise, on_step=progress.advance)
        progress.advance()
        timings["structure_s"] = time.perf_counter() - started

        # 3. Structured latent on the kept structure.
        started = time.perf_counter()
        slat = self.sample_latent(cond, coords, params, generator=generator,
                                  on_step=progress.advance)
        timings["latent_s"] = time.perf_counter() - started

        # 4. Gaussians, in the service frame.
        started = time.perf_counter()
        gaussians = to_service_gaussians(self.decode_gaussians(slat))
        progress.advance()
        timings["decode_s"] = time.perf_counter() - started
        info = {"voxels": int(coords.shape[0]), "oversample_voxels": counts,
                "gaussians": len(gaussians), "timings": timings}
        log.info("trellis: %d voxels of %s, %d Gaussians", coords.shape[0], counts, len(gaussians))
        return GeneratorOutput(gaussians=gaussians, info=info)

    # -- stages (public for benchmarks and tests) ---------------------------

    def encode_image(self, rgb: np.ndarray) -> Tensor:
        """Conditioning tokens ``[1, T, C]`` of a framed RGB uint8 image."""
        return self.models.conditioner(rgb)

    def structure_noise(self, count: int, generator: torch.Generator) -> Tensor:
        """``count`` noise grids for the sparse-structure flow, drawn on the CPU."""
        flow = self.models.ss_flow
        noise = torch.randn(count, flow.in_channels, flow.resolution, flow.resolution,
                            flow.resolution, generator=generator)
        return noise.to(self.device)

    def sample_structure(self, cond: Tensor, params: TrellisParams, noise: Tensor, *,
                         on_step: Any = None) -> tuple[Tensor, list[int]]:
        """Sample one structure per ``noise`` grid; return the smallest non-empty one's
        voxels ``[N, 4]`` (batch 0) and every sample's voxel count."""
        flow = self.models.ss_flow
        count = noise.shape[0]
        cond_batch = cond.expand(count, -1, -1)
        both = torch.cat([cond_batch, torch.zeros_like(cond_batch)])

        def velocity(x: Tensor, t: float, guided: bool) -> tuple[Tensor, Tensor | None]:
            if not guided:
                return flow(x, _times(t, count, x.device), cond_batch), None
            v = flow(torch.cat([x, x]), _times(t, 2 * count, x.device), both)
            return v[:count], v[count:]

        latent = euler_sample(noise, velocity, params.ss_settings(self.config.ss_sampler.sigma_min),
                              on_step=on_step)
        occupied = self.models.ss_decoder(latent)[:, 0] > 0
        counts = [int(n) for n in occupied.flatten(1).sum(1).tolist()]
        candidates = [i for i, n in enumerate(counts) if n > 0]
        if not candidates:
            raise GenerateError("every sampled structure is empty",
                                code="generate.empty_structure")
        best = min(candidates, key=lambda i: counts[i])
        voxels = torch.nonzero(occupied[best]).to(torch.int32)
        coords = torch.cat([torch.zeros_like(voxels[:, :1]), voxels], dim=1)
        return coords, counts

    def sample_latent(self, cond: Tensor, coords: Tensor, params: TrellisParams, *,
                      generator: torch.Generator, on_step: Any = None) -> SparseTensor:
        """Sample the structured latent on voxels ``coords`` (batch 0) and un-normalise it."""
        flow = self.models.slat_flow
        single = Structure(coords.to(self.device), batch_size=1)
        double = single.repeat(2)
        both = torch.cat([cond, torch.zeros_like(cond)])
        noise = torch.randn(single.num_voxels, flow.in_channels,
                            generator=generator).to(self.device)

        def run(structure: Structure) -> GraphedCall:
            def forward(feats: Tensor, t: Tensor, context: Tensor) -> Tensor:
                return flow(SparseTensor(feats, structure), t, context).feats
            return GraphedCall(forward, enabled=self.use_cuda_graphs)

        unguided, guided_pair = run(single), run(double)

        def velocity(x: Tensor, t: float, guided: bool) -> tuple[Tensor, Tensor | None]:
            if not guided:
                return unguided(x, _times(t, 1, x.device), cond), None
            v = guided_pair(torch.cat([x, x]), _times(t, 2, x.device), both)
            return v[:single.num_voxels], v[single.num_voxels:]

        feats = euler_sample(noise, velocity,
                             params.slat_settings(self.config.slat_sampler.sigma_min),
                             on_step=on_step)
        mean = torch.tensor(self.config.slat_mean, device=feats.device)
        std = torch.tensor(self.config.slat_std, device=feats.device)
        return SparseTensor(feats * std + mean, single)

    def decode_gaussians(self, slat: SparseTensor) -> GaussianTensors:
        decoder = self.models.gs_decoder
        return decoder.to_gaussians(slat.coords, decoder(slat))

    @torch.inference_mode()
    def warmup(self) -> None:
        """Run every network once on small inputs (kernel selection, allocator warm-up)."""
        started = time.perf_counter()
        side = self.models.conditioner.model.config.image_size
        cond = self.encode_image(np.zeros((side, side, 3), dtype=np.uint8))
        flow = self.models.ss_flow
        # Batches of one and of several: compiled kernels specialise on size 1.
        for batch in (1, 2):
            noise = torch.randn(batch, flow.in_channels, flow.resolution, flow.resolution,
                                flow.resolution, device=self.device)
            latent = flow(noise, _times(500.0, batch, self.device),
                          cond.expand(batch, -1, -1))
        self.models.ss_decoder(latent)
        grid = torch.stack(torch.meshgrid(*[torch.arange(8, 24)] * 3, indexing="ij"), -1)
        coords = torch.cat([torch.zeros(4096, 1, dtype=torch.long), grid.reshape(-1, 3)], 1)
        single = Structure(coords.to(self.device))
        for batch in (1, 2):
            structure = single.repeat(batch)
            feats = torch.randn(structure.num_voxels, self.models.slat_flow.in_channels,
                                device=self.device)
            out = self.models.slat_flow(SparseTensor(feats, structure),
                                        _times(500.0, batch, self.device),
                                        cond.expand(batch, -1, -1))
        self.models.gs_decoder(out)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        log.info("trellis warm-up took %.2f s", time.perf_counter() - started)


def _times(t: float, count: int, device: torch.device) -> Tensor:
    return torch.full((count,), t, dtype=torch.float32, device=device)


def to_service_gaussians(g: GaussianTensors) -> Gaussians:
    """TRELLIS-frame Gaussian tensors → :class:`Gaussians` in the service frame (Y up, +Z front)."""
    positions = g.positions.float().cpu().numpy() @ _TO_SERVICE.T
    rotations = _quat_multiply(np.asarray(_TO_SERVICE_QUAT, dtype=np.float32),
                               g.rotations.float().cpu().numpy())
    rotations /= np.linalg.norm(rotations, axis=1, keepdims=True)
    return Gaussians(positions=np.ascontiguousarray(positions, dtype=np.float32),
                     sh_dc=g.sh_dc.float().cpu().numpy(),
                     opacity_logits=g.opacity_logits.float().cpu().numpy(),
                     log_scales=g.log_scales.float().cpu().numpy(),
                     rotations=np.ascontiguousarray(rotations, dtype=np.float32))


def _quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a ⊗ b`` of ``w, x, y, z`` quaternions (``a`` broadcast over ``b``)."""
    aw, ax, ay, az = (a[..., i] for i in range(4))
    bw, bx, by, bz = (b[..., i] for i in range(4))
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], axis=-1)
