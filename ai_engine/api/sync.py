"""Synchronous endpoints for clients of the older Qwen-edit → RMBG → TRELLIS service.

``POST /generate`` (multipart → splat PLY bytes), ``POST /generate-spz`` (→ SPZ bytes),
``POST /generate_from_base64`` (JSON → JSON with base64 PLY) and ``GET /health``.
Each call becomes an ordinary job (session ``sync``) that goes through the same
queue, executor and storage as asynchronous jobs; the view waits for it and
answers with the bytes. The splat generator is TRELLIS when its weights are
present, else the configured default (``silhouette`` gives splats from surface
samples, so the endpoints work on any machine).
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ai_engine.api import problems
from ai_engine.api.routes import read_json, submit_job
from ai_engine.engine import ENGINE, Engine
from ai_engine.errors import EngineError
from ai_engine.fetch import decode_base64_image
from ai_engine.generators.registry import params_model
from ai_engine.jobs.model import Job, new_job_id, random_seed, request_fingerprint

sync_routes = web.RouteTableDef()
SYNC_TIMEOUT_S = 900.0


class GenerateFromBase64(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_type: str = Field("image", pattern="^image$")
    prompt_image: str
    seed: int = Field(-1, ge=-1, le=2**31 - 1)
    trellis_params: dict[str, Any] | None = None
    return_intermediates: bool = True


def splat_generator(engine: Engine) -> str:
    return "trellis" if "trellis" in engine.available else engine.resolve_generator(None)


# TRELLIS's own sampler argument names -> our TrellisParams fields
_SAMPLER_KEYS = {"steps": "steps", "cfg_strength": "cfg", "cfg_interval": "cfg_interval",
                 "rescale_t": "rescale_t"}
_SAMPLERS = {"sparse_structure_sampler_params": "ss", "slat_sampler_params": "slat"}


def translate_trellis_params(overrides: dict[str, Any]) -> dict[str, Any]:
    """Accept both our flat names (``ss_steps``, ``slat_cfg``, ...) and TRELLIS's nested
    ``sparse_structure_sampler_params`` / ``slat_sampler_params`` (``steps``,
    ``cfg_strength``, ``cfg_interval``, ``rescale_t``). Unknown keys are kept, so that
    validation reports them."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        prefix = _SAMPLERS.get(key)
        if prefix is None or not isinstance(value, dict):
            flat[key] = value
            continue
        for name, inner in value.items():
            flat[f"{prefix}_{_SAMPLER_KEYS.get(name, name)}"] = inner
    return flat


def _params(engine: Engine, generator: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Translate ``trellis_params`` into the generator's params (422 on unknown keys)."""
    if not overrides:
        return {}
    if generator != "trellis":
        raise problems.invalid([{"loc": ["trellis_params"],
                                 "msg": "TRELLIS is not available here; omit trellis_params"}])
    flat = translate_trellis_params(overrides)
    try:
        params_model(generator).model_validate(flat)
    except ValidationError as exc:
        raise problems.validation_problem(exc, prefix=("trellis_params",)) from exc
    return flat


async def run_sync_job(engine: Engine, image: bytes, *, seed: int, fmt: str,
                       params: dict[str, Any], generator: str) -> Job:
    """Submit a job for ``image`` and wait for its end (or raise a problem)."""
    engine.require_accepting()
    asset_id = uuid.uuid4().hex
    body: dict[str, Any] = {"session_id": "sync", "asset_id": asset_id,
            "image_base64": base64.b64encode(image).decode(), "formats": [fmt],
            "generator": generator, "seed": seed, "params": params,
            "webhook_url": None, "webhook_events": ["completed"], "image_url": None}
    job = Job(job_id=new_job_id(), session_id="sync", asset_id=asset_id,
              request=body, request_hash=request_fingerprint(body), generator=generator,
              seed=seed if seed >= 0 else random_seed())
    queue = engine.events.subscribe(job.job_id)
    try:
        await submit_job(engine, job)
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        while not job.status.is_terminal:
            try:
                await asyncio.wait_for(queue.get(), timeout=max(0.1, min(
                    2.0, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise problems.ApiProblem(504, "Timeout", "generation took too long",
                                              slug="timeout") from None
            job = await engine.store.get(job.job_id) or job
    finally:
        engine.events.unsubscribe(job.job_id, queue)
    if job.error:
        status = 422 if job.error["code"].startswith(("imaging.", "input.")) else 500
        raise problems.ApiProblem(status, "Generation failed",
                                  f"{job.error['code']}: {job.error['message']}",
                                  slug=job.error["code"].replace(".", "-"))
    return job


async def asset_bytes(engine: Engine, job: Job, fmt: str) -> bytes:
    asset = next(a for a in job.assets if a["format"] == fmt)
    return await engine.storage.get(asset["key"])


async def _multipart_image(request: web.Request) -> tuple[bytes, int]:
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge as exc:
        raise problems.too_large(request.app[ENGINE].settings.max_body_bytes) from exc
    errors = []
    upload = form.get("prompt_image_file")
    data = b""
    if upload is None or not hasattr(upload, "file"):
        errors.append({"loc": ["prompt_image_file"], "msg": "a file field is required"})
    else:
        data = upload.file.read()
    seed = -1
    try:
        seed = int(str(form.get("seed", -1)))
    except ValueError:
        errors.append({"loc": ["seed"], "msg": "must be an integer"})
    if errors:
        raise problems.invalid(errors)
    return data, seed


async def _generate_file(request: web.Request, fmt: str, content_type: str,
                         name: str) -> web.Response:
    engine = request.app[ENGINE]
    image, seed = await _multipart_image(request)
    generator = splat_generator(engine)
    job = await run_sync_job(engine, image, seed=seed, fmt=fmt, params={}, generator=generator)
    data = await asset_bytes(engine, job, fmt)
    return web.Response(body=data, content_type=content_type, headers={
        "Content-Disposition": f'attachment; filename="{name}"', "X-Job-Id": job.job_id,
        "X-Seed": str(job.seed)})


@sync_routes.post("/generate")
async def generate_ply(request: web.Request) -> web.Response:
    return await _generate_file(request, "splat_ply", "application/octet-stream", "output.ply")


@sync_routes.post("/generate-spz")
async def generate_spz(request: web.Request) -> web.Response:
    return await _generate_file(request, "spz", "application/octet-stream", "output.spz")


@sync_routes.post("/generate_from_base64")
async def generate_from_base64(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    started = time.perf_counter()
    try:
        req = GenerateFromBase64.model_validate(await read_json(request))
    except ValidationError as exc:
        raise problems.validation_problem(exc) from exc
    try:
        image = decode_base64_image(req.prompt_image, max_bytes=engine.settings.fetch_max_bytes)
    except EngineError as exc:
        raise problems.invalid([{"loc": ["prompt_image"], "msg": exc.message}]) from exc
    generator = splat_generator(engine)
    params = {**_params(engine, generator, req.trellis_params),
              "intermediates": req.return_intermediates}
    job = await run_sync_job(engine, image, seed=req.seed, fmt="splat_ply", params=params,
                             generator=generator)
    ply = await asset_bytes(engine, job, "splat_ply")
    answer: dict[str, Any] = {"generation_time": round(time.perf_counter() - started, 3),
                              "ply_file_base64": base64.b64encode(ply).decode(),
                              "seed": job.seed, "job_id": job.job_id}
    if req.return_intermediates:
        for name, field in (("edited", "image_edited_file_base64"),
                            ("cutout", "image_without_background_file_base64")):
            key = (job.intermediates or {}).get(name, {}).get("key")
            if key:
                answer[field] = base64.b64encode(await engine.storage.get(key)).decode()
    return web.json_response(answer)


@sync_routes.get("/health")
async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    ready = engine.state == "ready"
    return web.json_response({"status": "ready" if ready else engine.state},
                             status=200 if ready else 503)
