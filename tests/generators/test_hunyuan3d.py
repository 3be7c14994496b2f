"""The hunyuan3d generator on tiny random Hunyuan3D-2 models in the official layouts.

Everything here is real: weights written to disk in the published layouts, read by
the real loader, run through hy3dgen's own DiT, VAE and scheduler and through our
geometry engine; the references are hy3dgen's own pipeline and decoders.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hy3dgen")
pytest.importorskip("transformers")

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from scipy.spatial import cKDTree

from ai_engine.errors import GenerateError, GpuOutOfMemory, InvalidInput, SetupError
from ai_engine.generators.hunyuan3d import (
    Hunyuan3DGenerator,
    Hunyuan3DParams,
    _hy3dgen,
)
from ai_engine.generators.hunyuan3d.conditioner import (
    match_dinov2_names,
    rename_dinov2,
)
from ai_engine.generators.hunyuan3d.field import AdaptiveKVAttention, GeoDecoderField
from ai_engine.generators.hunyuan3d.pipeline import (
    BOUNDS,
    MC_LEVEL,
    Hunyuan3DPipeline,
    SurfacePlan,
)
from ai_engine.generators.hunyuan3d.weights import VariantModels
from ai_engine.geometry.types import Mesh
from ai_engine.imaging.frame import frame_hunyuan
from ai_engine.models_inventory import (
    available_generators,
    format_inventory,
    generators_with_weights,
    inventory,
)
from tests.generators.hunyuan_fixtures import write_tiny_hunyuan

SEED = 7


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_tiny_hunyuan(root, variants=("v2-0", "turbo"), layout="folder")
    return root


@pytest.fixture(scope="module")
def pipeline(models_dir: Path) -> Hunyuan3DPipeline:
    return Hunyuan3DPipeline.from_models_dir(models_dir, device="cpu")


@pytest.fixture(scope="module")
def framed() -> np.ndarray:
    cutout = np.zeros((300, 220, 4), np.uint8)
    cutout[40:260, 50:170] = (200, 90, 40, 255)
    cutout[120:180, 20:200] = (40, 90, 200, 255)
    return frame_hunyuan(cutout)


def _hy3dgen_pipeline(pipeline: Hunyuan3DPipeline, variant: str, image: torch.Tensor):
    """hy3dgen's own monolithic pipeline on the same modules, fed the same image tensor."""
    models = pipeline.models(variant)
    cls = _hy3dgen.pipelines().Hunyuan3DDiTFlowMatchingPipeline
    return cls(vae=models.vae, model=models.dit, scheduler=models.scheduler,
               conditioner=models.conditioner, image_processor=lambda _: {"image": image},
               device="cpu", dtype=torch.float32)


def _directed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each point of ``a`` to the nearest point of ``b``."""
    return cKDTree(b).query(a)[0]


# -- loading ------------------------------------------------------------------------------------

def test_loads_the_official_folder_layout(pipeline: Hunyuan3DPipeline) -> None:
    assert set(pipeline.variants) == {"v2-0", "turbo"}
    base, turbo = pipeline.models("v2-0"), pipeline.models("turbo")
    assert not base.guidance_distilled and turbo.guidance_distilled
    assert not base.flash_decoder and turbo.flash_decoder  # the turbo VAE folder was used
    assert turbo.location.vae_weights is not None
    assert base.conditioner is turbo.conditioner  # identical DINOv2 weights held once
    assert type(turbo.scheduler).__name__ == "ConsistencyFlowMatchEulerDiscreteScheduler"
    assert pipeline.dtype == torch.float32


def test_combined_file_gives_the_same_mesh(tmp_path: Path, pipeline: Hunyuan3DPipeline,
                                           framed: np.ndarray) -> None:
    write_tiny_hunyuan(tmp_path, variants=("v2-0",), layout="combined")
    combined = Hunyuan3DPipeline.from_models_dir(tmp_path, device="cpu")
    assert combined.models("v2-0").location.layout == "combined"
    plan = SurfacePlan(32, 1 << 14, hierarchical=False)
    a = pipeline.run(framed, variant="v2-0", steps=4, guidance=5.0, seed=SEED, plan=plan).mesh
    b = combined.run(framed, variant="v2-0", steps=4, guidance=5.0, seed=SEED, plan=plan).mesh
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)


def test_refuses_config_targets_outside_hy3dgen_models() -> None:
    with pytest.raises(SetupError):
        _hy3dgen.resolve_target("os.system")
    with pytest.raises(SetupError):
        _hy3dgen.resolve_target("hy3dgen.shapegen.pipelines.Hunyuan3DDiTPipeline")
    assert _hy3dgen.resolve_target("hy3dgen.shapegen.models.ShapeVAE").__name__ == "ShapeVAE"


def test_shape_modules_import_without_torchvision_opencv_or_pymeshlab() -> None:
    code = ("import sys; from ai_engine.generators.hunyuan3d import _hy3dgen;"
            "[_hy3dgen.resolve_target(m + '.' + c) for c, m in _hy3dgen.TARGETS.items()];"
            "_hy3dgen.pipelines();"
            "import ai_engine.generators.hunyuan3d.pipeline;"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torchvision', 'cv2', 'pymeshlab', 'rembg', 'gradio'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "[]"


def test_dinov2_names_match_transformers_own_conversion(tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          image_size=28, patch_size=14, use_swiglu_ffn=True)
    model = Dinov2Model(config)
    legacy = rename_dinov2(model.state_dict(), legacy=True)
    assert any(".mlp.weights_in." in k for k in legacy)
    assert any(".attention.attention.query." in k for k in legacy)
    config.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in legacy.items()}, str(tmp_path / "model.safetensors"))
    reference = Dinov2Model.from_pretrained(tmp_path, local_files_only=True).state_dict()
    ours = match_dinov2_names(legacy, set(reference))
    assert set(ours) == set(reference)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


# -- the chain --------------------------------------------------------------------------------

class _NoUnscale(Hunyuan3DPipeline):
    def decode_latents(self, models: VariantModels, latents: torch.Tensor) -> torch.Tensor:
        return models.vae(latents)  # type: ignore[no-any-return,unused-ignore]


class _NoVaeForward(Hunyuan3DPipeline):
    def decode_latents(self, models: VariantModels, latents: torch.Tensor) -> torch.Tensor:
        return models.vae.post_kl((1.0 / models.vae.scale_factor) * latents)  # type: ignore[no-any-return,unused-ignore]


class _LevelZero(Hunyuan3DPipeline):
    mc_level = 0.0


@pytest.mark.parametrize("variant,steps", [("v2-0", 5), ("turbo", 5)])
def test_chain_equals_hy3dgen_pipeline_and_the_check_can_fail(
        pipeline: Hunyuan3DPipeline, framed: np.ndarray, variant: str, steps: int) -> None:
    resolution = 32
    plan = SurfacePlan(resolution, 1 << 14, hierarchical=False)
    image = pipeline.image_tensor(framed, size_px=512)
    reference = _hy3dgen_pipeline(pipeline, variant, image)(
        image=framed, num_inference_steps=steps, guidance_scale=5.0,
        generator=torch.Generator().manual_seed(SEED), box_v=BOUNDS,
        octree_resolution=resolution, mc_level=-1 / 512, num_chunks=1 << 14,
        enable_pbar=False)[0]
    # hy3dgen maps lattice index i to i / (R + 1) * size (not i / R): undo that.
    ref = (np.asarray(reference.vertices) + BOUNDS) * (resolution + 1) / resolution - BOUNDS

    def distance(cls: type[Hunyuan3DPipeline]) -> float:
        chain = cls(pipeline.variants, device=pipeline.device, dtype=pipeline.dtype)
        try:
            mesh = chain.run(framed, variant=variant, steps=steps, guidance=5.0, seed=SEED,
                             plan=plan).mesh
        except GenerateError:
            return float("inf")
        if len(mesh.vertices) != len(ref):
            return float("inf")
        return float(max(_directed(mesh.vertices, ref).max(), _directed(ref, mesh.vertices).max()))

    assert len(ref) > 100
    assert distance(Hunyuan3DPipeline) < 1e-5
    for broken in (_NoUnscale, _NoVaeForward, _LevelZero):
        assert distance(broken) > 1e-3, broken.__name__


def test_hierarchical_surface_is_within_a_voxel_of_hy3dgen_latents2mesh(
        pipeline: Hunyuan3DPipeline) -> None:
    models = pipeline.models("v2-0")
    resolution = 64
    with torch.inference_mode():
        latents = torch.randn((1, *models.vae.latent_shape),
                              generator=torch.Generator().manual_seed(SEED))
        decoded = pipeline.decode_latents(models, latents)
        plan = SurfacePlan(resolution, 1 << 14, hierarchical=True, base_resolution=16)
        ours, queries = pipeline.surface(models, decoded, plan)
        reference = models.vae.latents2mesh(decoded, bounds=BOUNDS, mc_level=MC_LEVEL,
                                            octree_resolution=resolution, num_chunks=1 << 14,
                                            enable_pbar=False)[0]
    assert reference is not None and len(ours.vertices) > 100
    assert queries < (resolution + 1) ** 3  # the hierarchy skipped part of the lattice
    # hy3dgen maps lattice index i to i / (R + 1) * size: its surface is shrunk by
    # R / (R + 1) towards the (-1.01)^3 corner, up to a voxel at the far one. Undo that.
    ref = (reference.mesh_v + BOUNDS) * (resolution + 1) / resolution - BOUNDS
    # Within a voxel, as promised; in fact the same vertices: the hierarchy queried
    # every cell the surface crosses, and the two marching cubes agree on edge vertices.
    voxel = 2 * BOUNDS / resolution
    assert _directed(ours.vertices, ref).max() < 1e-3 * voxel
    assert _directed(ref, ours.vertices).max() < 1e-3 * voxel


# -- adaptive KV selection ---------------------------------------------------------------------

def test_adaptive_kv_attention_matches_a_per_region_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    heads, count, keys, dim, top_k = 2, 300, 24, 8, 5
    q = torch.randn(1, heads, count, dim, generator=gen)
    k = torch.randn(1, heads, keys, dim, generator=gen)
    v = torch.randn(1, heads, keys, dim, generator=gen)
    ids = torch.randint(0, 7, (count,), generator=gen) * 3  # sparse region numbers
    # small tiles and gather budget: several tiles per region, several batches
    processor = AdaptiveKVAttention(top_k=top_k, tile=16, max_gather_bytes=4096)
    processor.region_ids = ids
    out = processor(None, q, k, v)
    expected = torch.empty_like(q)
    for region in ids.unique():
        rows = torch.nonzero(ids == region)[:, 0]
        for h in range(heads):
            qr = q[0, h, rows]
            chosen = (qr.mean(0) @ k[0, h].T).topk(top_k).indices
            weights = torch.softmax(qr @ k[0, h, chosen].T / dim**0.5, dim=-1)
            expected[0, h, rows] = weights @ v[0, h, chosen]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert processor.region_ids is None  # consumed: the next call must set its own
    # the mean query from every third point of each region (in point order)
    strided = AdaptiveKVAttention(top_k=top_k, tile=16, mean_stride=3)
    strided.region_ids = ids
    out = strided(None, q, k, v)
    for region in ids.unique():
        rows = torch.nonzero(ids == region)[:, 0]
        for h in range(heads):
            qr = q[0, h, rows]
            chosen = (qr[::3].mean(0) @ k[0, h].T).topk(top_k).indices
            weights = torch.softmax(qr @ k[0, h, chosen].T / dim**0.5, dim=-1)
            expected[0, h, rows] = weights @ v[0, h, chosen]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    everything = AdaptiveKVAttention(top_k=keys)
    everything.region_ids = ids
    torch.testing.assert_close(everything(None, q, k, v),
                               torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_field_with_every_key_selected_is_the_plain_decoder(pipeline: Hunyuan3DPipeline) -> None:
    models = pipeline.models("turbo")
    with torch.inference_mode():
        decoded = pipeline.decode_latents(models, torch.randn(1, *models.vae.latent_shape))
        points = torch.rand(500, 3) * 2 - 1
        plain = GeoDecoderField(models.vae, decoded, bounds=BOUNDS)(points)
        everything = GeoDecoderField(models.vae, decoded, bounds=BOUNDS, regions_per_axis=4,
                                     top_k=decoded.shape[1])(points)
        selected = GeoDecoderField(models.vae, decoded, bounds=BOUNDS, regions_per_axis=4)(points)
    torch.testing.assert_close(everything, plain, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(selected, plain)
    # the decoder's own processor is back in place
    attention = models.vae.geo_decoder.cross_attn_decoder.attn.attention
    assert not isinstance(attention.attn_processor, AdaptiveKVAttention)


# -- the generator ------------------------------------------------------------------------------

def test_generator_makes_a_cleaned_mesh_with_progress(pipeline: Hunyuan3DPipeline,
                                                       framed: np.ndarray) -> None:
    generator = Hunyuan3DGenerator(pipeline)
    assert generator.name == "hunyuan3d" and generator.native == "mesh"
    progress: list[float] = []
    params = Hunyuan3DParams(steps=3, octree_resolution=128, face_count=3000)
    raw = generator(framed, params=params, seed=SEED, on_progress=progress.append)
    # clean-up and the face budget come after, on the executor's CPU pool
    assert raw.postprocess is not None
    out = raw.finished()
    assert out.mesh is not None and not out.mesh.is_empty
    assert len(out.mesh.faces) <= 3000 < len(raw.mesh.faces if raw.mesh else [])
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)
    assert out.info is not None
    assert out.info["variant"] == "v2-0" and out.info["decoding"] == "hierarchical"
    assert set(out.info["timings_s"]) == {"conditioning", "sampling", "vae", "surface"}
    again = generator(framed, params=params, seed=SEED, on_progress=lambda _: None).finished()
    other = generator(framed, params=params, seed=SEED + 1,
                      on_progress=lambda _: None).finished()
    assert again.mesh is not None and other.mesh is not None
    assert np.array_equal(again.mesh.vertices, out.mesh.vertices)
    assert not np.array_equal(other.mesh.vertices, out.mesh.vertices)


def test_turbo_takes_the_flashvdm_path(pipeline: Hunyuan3DPipeline, framed: np.ndarray) -> None:
    params = Hunyuan3DParams(variant="turbo", octree_resolution=128, face_count=None)
    for adaptive_kv in (False, True):
        out = Hunyuan3DGenerator(pipeline, adaptive_kv=adaptive_kv)(
            framed, params=params, seed=SEED, on_progress=lambda _: None)
        assert out.info is not None and out.mesh is not None and not out.mesh.is_empty
        assert out.info["steps"] == 5 and out.info["adaptive_kv"] is adaptive_kv
        assert out.info["decoding"] == "hierarchical"


def test_no_surface_is_generate_empty_mesh(models_dir: Path, framed: np.ndarray) -> None:
    own = Hunyuan3DPipeline.from_models_dir(models_dir, device="cpu", variants=("v2-0",))
    with torch.no_grad():  # weights whose occupancy is inside everywhere
        own.models("v2-0").vae.geo_decoder.output_proj.bias.fill_(100.0)
    with pytest.raises(GenerateError) as failure:
        Hunyuan3DGenerator(own)(framed, params=Hunyuan3DParams(steps=2, octree_resolution=128),
                                seed=SEED, on_progress=lambda _: None)
    assert failure.value.code == "generate.empty_mesh"


class _OutOfMemory(Hunyuan3DPipeline):
    """A pipeline whose surface stage runs out of CUDA memory its first ``failures`` times
    (no real GPU here: the error is the one torch raises)."""

    failures = 1

    plans: list[SurfacePlan]

    def surface(self, models: VariantModels, decoded: torch.Tensor,
                plan: SurfacePlan) -> tuple[Mesh, int]:
        self.plans = [*getattr(self, "plans", []), plan]
        if len(self.plans) <= self.failures:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().surface(models, decoded, plan)


def test_out_of_memory_retries_smaller_then_fails(pipeline: Hunyuan3DPipeline,
                                                  framed: np.ndarray) -> None:
    params = Hunyuan3DParams(steps=2, octree_resolution=160, num_chunks=40_000, face_count=None)
    once = _OutOfMemory(pipeline.variants, device=pipeline.device, dtype=pipeline.dtype)
    out = Hunyuan3DGenerator(once)(framed, params=params, seed=SEED, on_progress=lambda _: None)
    assert out.mesh is not None and out.info is not None and out.info["oom_retry"] is True
    first, retry = once.plans
    assert (first.resolution, first.chunk_size) == (160, 40_000)
    assert retry.resolution == 128 and retry.chunk_size == 10_000
    always = _OutOfMemory(pipeline.variants, device=pipeline.device, dtype=pipeline.dtype)
    always.failures = 2
    with pytest.raises(GpuOutOfMemory) as failure:
        Hunyuan3DGenerator(always)(framed, params=params, seed=SEED, on_progress=lambda _: None)
    assert failure.value.code == "gpu.out_of_memory"


def test_params_are_validated() -> None:
    defaults = Hunyuan3DParams()
    assert defaults.variant is None and defaults.octree_resolution == 256
    for bad in ({"octree_resolution": 64}, {"octree_resolution": 1024}, {"variant": "xl"},
                {"steps": 0}, {"guidance": -1}, {"num_chunks": 10}, {"seed": 3}):
        with pytest.raises(ValidationError):
            Hunyuan3DParams.model_validate(bad)


def test_a_variant_not_installed_is_invalid_input(pipeline: Hunyuan3DPipeline,
                                                  framed: np.ndarray) -> None:
    with pytest.raises(InvalidInput) as failure:
        Hunyuan3DGenerator(pipeline)(framed, params=Hunyuan3DParams(variant="mini"), seed=0,
                                     on_progress=lambda _: None)
    assert failure.value.code == "input.variant_unavailable"


def test_load_warms_up_every_variant(models_dir: Path) -> None:
    generator = Hunyuan3DGenerator.load(models_dir=models_dir, device="cpu", warm_up=True)
    assert generator.default_variant == "v2-0"
    assert set(generator.pipeline.variants) == {"v2-0", "turbo"}


def test_missing_weights_is_a_setup_error(tmp_path: Path) -> None:
    with pytest.raises(SetupError) as failure:
        Hunyuan3DGenerator.load(models_dir=tmp_path, device="cpu")
    assert failure.value.code == "setup.missing_weights"


# -- inventory ---------------------------------------------------------------------------------

def test_inventory_reports_present_and_missing(models_dir: Path) -> None:
    statuses = {s.name: s for s in inventory(models_dir)}
    assert statuses["hunyuan3d-dit-v2-0"].present
    turbo = statuses["hunyuan3d-dit-v2-0-turbo"]
    assert turbo.present and any("hunyuan3d-vae-v2-0-turbo" in n for n in turbo.notes)
    mini = statuses["hunyuan3d-dit-v2-mini"]
    assert not mini.present and "hunyuan3d-dit-v2-mini/config.yaml" in mini.missing
    trellis = statuses["trellis-image-large"]
    assert not trellis.present and "trellis-image-large/pipeline.json" in trellis.missing
    assert "dinov2-vitl14-reg/config.json" in trellis.missing
    assert statuses["silhouette"].present
    assert generators_with_weights(models_dir) == {"hunyuan3d"}
    assert available_generators(models_dir, has_gpu=False) == {"silhouette"}
    assert available_generators(models_dir, has_gpu=True) == {"silhouette", "hunyuan3d"}
    assert available_generators(models_dir, has_gpu=False, allow_cpu=True) == {
        "silhouette", "hunyuan3d"}
    report = format_inventory(models_dir, has_gpu=False)
    assert "weights present but no GPU for: hunyuan3d" in report


def test_inventory_reads_the_combined_layout_and_a_missing_vae(tmp_path: Path) -> None:
    write_tiny_hunyuan(tmp_path / "combined", variants=("turbo",), layout="combined")
    turbo = {s.name: s for s in inventory(tmp_path / "combined")}["hunyuan3d-dit-v2-0-turbo"]
    assert turbo.present and "combined layout" in turbo.notes
    assert any("FlashVDM" in n for n in turbo.notes)  # no turbo VAE: the slower decoder
    # an official DiT file without its vae.* part and no VAE folder beside it
    write_tiny_hunyuan(tmp_path / "novae", variants=("v2-0",))
    path = tmp_path / "novae" / "hunyuan3d-dit-v2-0" / "model.fp16.safetensors"
    save_file({k: v for k, v in load_file(str(path)).items() if not k.startswith("vae.")},
              str(path))
    v20 = {s.name: s for s in inventory(tmp_path / "novae")}["hunyuan3d-dit-v2-0"]
    assert not v20.present and "hunyuan3d-vae-v2-0/config.yaml" in v20.missing


def test_inventory_finds_trellis(tmp_path: Path) -> None:
    ckpts = tmp_path / "trellis-image-large" / "ckpts"
    ckpts.mkdir(parents=True)
    (tmp_path / "trellis-image-large" / "pipeline.json").write_text("{}")
    from ai_engine.models_inventory import TRELLIS_CHECKPOINTS

    for stem in TRELLIS_CHECKPOINTS:
        (ckpts / f"{stem}.json").write_text(json.dumps({"name": stem, "args": {}}))
        (ckpts / f"{stem}.safetensors").write_bytes(b"")
    status = {s.name: s for s in inventory(tmp_path)}["trellis-image-large"]
    assert not status.present and status.missing == ("dinov2-vitl14-reg/config.json",
                                                     "dinov2-vitl14-reg/model.safetensors")
    (tmp_path / "dinov2-vitl14-reg").mkdir()
    (tmp_path / "dinov2-vitl14-reg" / "config.json").write_text("{}")
    (tmp_path / "dinov2-vitl14-reg" / "model.safetensors").write_bytes(b"")
    assert {s.name: s for s in inventory(tmp_path)}["trellis-image-large"].present
