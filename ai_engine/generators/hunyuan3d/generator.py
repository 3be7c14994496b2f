"""The ``hunyuan3d`` generator: Tencent Hunyuan3D-2 shapes through hy3dgen's models.

This module imports without torch (the API validates :class:`Hunyuan3DParams`
in processes that never load a model); :meth:`Hunyuan3DGenerator.load` brings
in the pipeline (:mod:`.pipeline`, where the chain is written out).

Failures: no surface -> ``GenerateError`` ``generate.empty_mesh``; CUDA out of
memory -> memory freed and the job run once more at a lower lattice resolution
with smaller decoder chunks, then ``GpuOutOfMemory`` ``gpu.out_of_memory``.
Either way the device stays usable for the next job.
"""

from __future__ import annotations

import functools
import gc
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ai_engine.errors import GenerateError, GpuOutOfMemory
from ai_engine.generators.base import RGBA, GeneratorOutput, ProgressFn
from ai_engine.geometry.mesh import clean_mesh
from ai_engine.imaging.frame import frame_hunyuan

if TYPE_CHECKING:
    from ai_engine.generators.hunyuan3d.pipeline import Hunyuan3DPipeline, SurfacePlan

logger = logging.getLogger(__name__)

#: Sampling steps when a request names none: the turbo DiT is distilled to 5.
DEFAULT_STEPS = {"v2-0": 50, "fast": 50, "mini": 50, "turbo": 5}
DEFAULT_GUIDANCE = 5.0
DEFAULT_OCTREE_RESOLUTION = 256
#: Field points per geo-decoder call when a request names none.
DEFAULT_CHUNK = {"cuda": 1 << 18, "cpu": 1 << 15}
#: Variant used when a request names none, the first one installed.
PREFERENCE = ("v2-0", "fast", "turbo", "mini")
#: The retry after running out of GPU memory.
OOM_RESOLUTION_FACTOR = 0.75
OOM_MIN_RESOLUTION = 128


class Hunyuan3DParams(BaseModel):
    """Per-job overrides for ``hunyuan3d`` (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")

    variant: Literal["v2-0", "mini", "turbo", "fast"] | None = Field(
        default=None,
        description="DiT variant: 'v2-0' (50 steps, classifier-free guidance), 'fast' "
                    "(guidance-distilled, half the DiT work per step), 'turbo' (5-step "
                    "distilled, FlashVDM decoding), 'mini' (0.6B DiT); default: the first "
                    "installed of v2-0, fast, turbo, mini")
    steps: int | None = Field(default=None, ge=1, le=200,
                              description="flow-matching steps; default 50, turbo 5")
    guidance: float = Field(default=DEFAULT_GUIDANCE, ge=0.0, le=20.0,
                            description="guidance scale (classifier-free, or the guidance "
                                        "embedding of distilled variants)")
    octree_resolution: int = Field(default=DEFAULT_OCTREE_RESOLUTION, ge=128, le=512,
                                   description="lattice cells per axis over [-1.01, 1.01]^3 "
                                               "for surface extraction")
    num_chunks: int | None = Field(default=None, ge=1_000, le=2_000_000,
                                   description="points per geo-decoder call (memory vs speed); "
                                               "default 262144 on a GPU, 32768 on a CPU")
    face_count: int | None = Field(default=40_000, ge=100, le=2_000_000,
                                   description="face budget after cleanup (None keeps all)")


class Hunyuan3DGenerator:
    """Hunyuan3D-2 image-to-mesh generator (see :mod:`.pipeline` for the chain)."""

    name: ClassVar[str] = "hunyuan3d"
    native: ClassVar[Literal["mesh", "splat"]] = "mesh"
    Params: ClassVar[type[BaseModel]] = Hunyuan3DParams

    def __init__(self, pipeline: Hunyuan3DPipeline, *, hierarchical: bool = True,
                 adaptive_kv: bool = False) -> None:
        """``adaptive_kv``: FlashVDM's adaptive KV selection for the turbo decoder.
        Off by default: on an H100 the full attention (cuDNN) decodes as fast or
        faster than selection plus its gathers (benchmarks/RESULTS.md)."""
        self.pipeline = pipeline
        self.hierarchical = hierarchical
        self.adaptive_kv = adaptive_kv
        self.default_variant = next(v for v in PREFERENCE if v in pipeline.variants)

    @classmethod
    def load(cls, *, models_dir: Path, device: str, variants: tuple[str, ...] | None = None,
             warm_up: bool | None = None, compile_dit: bool = False,
             adaptive_kv: bool = False, **options: Any) -> Hunyuan3DGenerator:
        """Load every installed variant (or ``variants``) on ``device``; warm up
        (``warm_up``, by default on CUDA) so that the first job pays no start-up cost.
        ``compile_dit`` compiles the DiTs during the warm-up (about a minute per
        variant; the DiT then runs 1.7x faster on an H100).

        ``options`` go to :meth:`Hunyuan3DPipeline.from_models_dir` (``dtype``).
        Raises ``SetupError`` when no variant's weights are complete.
        """
        from ai_engine.generators.hunyuan3d.pipeline import Hunyuan3DPipeline

        pipeline = Hunyuan3DPipeline.from_models_dir(models_dir, device=device,
                                                     variants=variants, **options)
        generator = cls(pipeline, adaptive_kv=adaptive_kv)
        if compile_dit:
            pipeline.compile_dits()
        if warm_up or compile_dit or (warm_up is None and pipeline.device.type == "cuda"):
            pipeline.warm_up()
        return generator

    def frame(self, cutout: RGBA) -> RGBA:
        """Recentred on the alpha box, border ratio 0.15, 512², composited on white."""
        return frame_hunyuan(cutout)

    def __call__(self, framed: RGBA, *, params: BaseModel, seed: int,
                 on_progress: ProgressFn) -> GeneratorOutput:
        opts = params if isinstance(params, Hunyuan3DParams) else \
            Hunyuan3DParams.model_validate(params.model_dump())
        variant = opts.variant or self.default_variant
        models = self.pipeline.models(variant)
        steps = opts.steps or DEFAULT_STEPS[variant]
        plan = self._plan(opts, adaptive_kv=self.adaptive_kv and models.flash_decoder)
        on_progress(0.0)
        retried = False
        result = self._run_unless_oom(framed, opts, variant, steps, seed, plan, on_progress)
        if result is None:
            smaller = self._smaller(plan)
            logger.warning("hunyuan3d ran out of GPU memory at octree %d / chunks %d; "
                           "retrying at %d / %d", plan.resolution, plan.chunk_size,
                           smaller.resolution, smaller.chunk_size)
            self._free_memory()
            plan, retried = smaller, True
            result = self._run_unless_oom(framed, opts, variant, steps, seed, plan, on_progress)
            if result is None:
                self._free_memory()
                raise GpuOutOfMemory("the GPU ran out of memory twice (retried at octree "
                                     f"resolution {plan.resolution})")
        on_progress(1.0)
        info = {"variant": variant, "steps": steps, "guidance": opts.guidance,
                "octree_resolution": plan.resolution, "num_chunks": plan.chunk_size,
                "decoding": "hierarchical" if plan.hierarchical else "dense",
                "adaptive_kv": plan.adaptive_kv, "field_queries": result.queries,
                "timings_s": result.timings_s, "oom_retry": retried}
        return GeneratorOutput(mesh=result.mesh, info=info,
                               postprocess=functools.partial(_clean, face_count=opts.face_count))

    def _run_unless_oom(self, *args: Any) -> Any:
        """``_run``, or None when it ran out of GPU memory. Returning (rather than handling
        the error in the caller's except block) drops the failed attempt's frames, and the
        GPU tensors they hold, before the caller releases memory."""
        try:
            return self._run(*args)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            return None

    def _run(self, framed: RGBA, opts: Hunyuan3DParams, variant: str, steps: int, seed: int,
             plan: SurfacePlan, on_progress: ProgressFn) -> Any:
        def on_step(done: int, total: int) -> None:
            on_progress(0.05 + 0.8 * done / total)

        return self.pipeline.run(framed, variant=variant, steps=steps, guidance=opts.guidance,
                                 seed=seed, plan=plan, on_step=on_step)

    def _plan(self, opts: Hunyuan3DParams, *, adaptive_kv: bool) -> SurfacePlan:
        from ai_engine.generators.hunyuan3d.pipeline import SurfacePlan

        chunk = opts.num_chunks or DEFAULT_CHUNK.get(self.pipeline.device.type,
                                                     DEFAULT_CHUNK["cpu"])
        return SurfacePlan(resolution=opts.octree_resolution, chunk_size=chunk,
                           hierarchical=self.hierarchical, adaptive_kv=adaptive_kv)

    @staticmethod
    def _smaller(plan: SurfacePlan) -> SurfacePlan:
        from dataclasses import replace

        # Keep the resolution even so the hierarchical levels still nest.
        resolution = max(OOM_MIN_RESOLUTION,
                         int(plan.resolution * OOM_RESOLUTION_FACTOR) // 2 * 2)
        return replace(plan, resolution=min(resolution, plan.resolution),
                       chunk_size=max(1_000, plan.chunk_size // 4))

    def _free_memory(self) -> None:
        import torch

        gc.collect()
        if self.pipeline.device.type == "cuda":
            torch.cuda.synchronize(self.pipeline.device)
            torch.cuda.empty_cache()


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


def _clean(output: GeneratorOutput, *, face_count: int | None) -> GeneratorOutput:
    """Mesh clean-up and the face budget: CPU work, run by the executor off the device."""
    assert output.mesh is not None
    mesh = clean_mesh(output.mesh, face_count=face_count)
    if mesh.is_empty:
        raise GenerateError("no surface left after removing degenerate parts",
                            code="generate.empty_mesh")
    return GeneratorOutput(mesh=mesh, info=output.info)
