"""HTTP views: parse and validate, hand over to the engine, answer.

Domain errors become HTTP here and only here (through ``problems``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AnyUrl, ValidationError

from ai_engine.api import problems
from ai_engine.api.schemas import JobAccepted, JobRequest
from ai_engine.engine import ENGINE, Engine
from ai_engine.errors import EngineError, UrlNotAllowed
from ai_engine.fetch import decode_base64_image, is_public_address
from ai_engine.generators.registry import FORMATS, params_model
from ai_engine.imaging.params import IMAGING_KEYS, split_params
from ai_engine.jobs.model import Job, new_job_id, random_seed, request_fingerprint
from ai_engine.jobs.store import Conflict, Delivery, QueueFull, StoreUnavailable
from ai_engine.webhooks.events import build_delivery

routes = web.RouteTableDef()


async def read_json(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise problems.too_large(request.app[ENGINE].settings.max_body_bytes) from exc
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise problems.bad_request(f"body is not valid JSON: {exc}") from exc


async def validate_job(engine: Engine, body: Any) -> tuple[JobRequest, str]:
    """Validate a job body completely; raises one 422 listing every problem."""
    if not isinstance(body, dict):
        raise problems.bad_request("body must be a JSON object")
    try:
        req = JobRequest.model_validate(body)
    except ValidationError as exc:
        raise problems.validation_problem(exc) from exc
    errors: list[dict[str, Any]] = []
    generator = engine.resolve_generator(req.generator)
    if generator not in engine.available:
        errors.append({"loc": ["generator"], "msg": f"generator {generator!r} is not available "
                       f"here (available: {', '.join(sorted(engine.available))})"})
    else:
        for i, fmt in enumerate(req.formats):
            if fmt not in FORMATS[generator]:
                errors.append({"loc": ["formats", i], "msg": f"{generator} cannot produce "
                               f"{fmt!r} (it produces {', '.join(FORMATS[generator])})"})
        rest: dict[str, Any] = {}
        try:
            imaging_params, rest = split_params(req.params)
            if (imaging_params.edit and engine.run_executors and engine.state == "ready"
                    and engine.services.editor is None):
                errors.append({"loc": ["params", "edit"], "msg": "the image-edit stage is not "
                               "loaded on this deployment (see AI_ENGINE_EDIT_LOAD)"})
        except ValidationError as exc:
            errors += problems.validation_problem(exc, prefix=("params",)).errors
            rest = {k: v for k, v in req.params.items() if k not in IMAGING_KEYS}
        try:
            params_model(generator).model_validate(rest)
        except ValidationError as exc:
            errors += problems.validation_problem(exc, prefix=("params",)).errors
        except EngineError as exc:
            errors.append({"loc": ["generator"], "msg": exc.message})
    if req.image_base64 is not None:
        try:
            await asyncio.to_thread(decode_base64_image, req.image_base64,
                                    max_bytes=engine.settings.fetch_max_bytes)
        except EngineError as exc:
            errors.append({"loc": ["image_base64"], "msg": exc.message})
    for field in ("image_url", "webhook_url"):
        url = getattr(req, field)
        if url is not None:
            problem = await url_problem(engine, url)
            if problem:
                errors.append({"loc": [field], "msg": problem})
    if errors:
        raise problems.invalid(errors)
    return req, generator


async def url_problem(engine: Engine, url: AnyUrl) -> str | None:
    """Why the address policy refuses ``url`` now, or None. The fetch stage checks again
    (and every redirect): this is to refuse early, in the 422, what cannot work."""
    host = (url.host or "").strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:  # an address literal: judged here, without a parse or a resolver
        if engine.settings.allow_private_urls or is_public_address(ip):
            return None
        return f"{host} is not a public address (AI_ENGINE_ALLOW_PRIVATE_URLS is off)"
    try:
        await engine.fetcher.check_url(str(url))
    except UrlNotAllowed as exc:
        return exc.message
    except EngineError:
        pass  # unresolvable now: the fetch stage reports it on the job
    return None


async def submit_job(engine: Engine, job: Job) -> tuple[Job, bool]:
    """Store ``job`` (or find the one with its key) and wake the executors; the store's
    refusals become their problems. Returns ``(job, created)``."""
    try:
        job, created = await engine.store.submit(job, max_queue=engine.settings.max_queue)
    except Conflict as exc:
        raise problems.conflict(
            f"({job.session_id}, {job.asset_id}) is job {exc.existing.job_id} with another "
            "body") from exc
    except QueueFull as exc:
        raise problems.queue_full(exc.retry_after_s) from exc
    except StoreUnavailable as exc:
        raise problems.unavailable("unable to reach its job store") from exc
    if created:
        engine.metrics.jobs_accepted.labels(generator=job.generator).inc()
        engine.wake_executors()
    return job, created


@routes.post("/generate-3d")
@routes.post("/v1/jobs")
async def create_job(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    engine.require_accepting()
    req, generator = await validate_job(engine, await read_json(request))
    body = req.model_dump(mode="json")
    seed = req.seed if req.seed >= 0 else random_seed()
    job = Job(job_id=new_job_id(), session_id=req.session_id, asset_id=req.asset_id,
              request=body, request_hash=request_fingerprint(body), generator=generator,
              seed=seed)
    job, created = await submit_job(engine, job)
    status_url = f"{engine.base_url(request)}/v1/jobs/{job.job_id}"
    if not created:
        return web.json_response({**job.public(), "status_url": status_url}, status=200)
    accepted = JobAccepted(job_id=job.job_id, status=job.status.value, status_url=status_url,
                           created_at=job.public()["created_at"])
    return web.json_response(accepted.model_dump(), status=202,
                             headers={"Location": status_url})


async def get_job_or_404(engine: Engine, job_id: str) -> Job:
    job = await engine.store.get(job_id)
    if job is None:
        raise problems.not_found(f"no job {job_id}")
    return job


@routes.get("/v1/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    job = await get_job_or_404(request.app[ENGINE], request.match_info["job_id"])
    return web.json_response(job.public())


@routes.get("/v1/jobs/{job_id}/events")
async def job_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the current state, then each change, ending after the terminal one."""
    engine = request.app[ENGINE]
    job_id = request.match_info["job_id"]
    job = await get_job_or_404(engine, job_id)
    queue = engine.events.subscribe(job_id)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    try:
        await _stream_job(engine, job_id, job, queue, response)
    except ConnectionResetError:
        return response  # the client went away
    finally:
        engine.events.unsubscribe(job_id, queue)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _stream_job(engine: Engine, job_id: str, job: Job,
                      queue: asyncio.Queue[dict[str, Any]],
                      response: web.StreamResponse) -> None:
    job = await engine.store.get(job_id) or job  # re-read after subscribing: no gap
    data: dict[str, Any] = job.public()
    last: tuple[Any, ...] | None = None
    while True:
        state = (data["status"], data["stage"], data["progress"])
        if state != last:
            await response.write(f"event: job\ndata: {json.dumps(data)}\n\n".encode())
            last = state
        if data["status"] in ("succeeded", "failed", "canceled"):
            return
        try:
            data = await asyncio.wait_for(queue.get(), timeout=15.0)
        except TimeoutError:
            await response.write(b": keep-alive\n\n")
            fresh = await engine.store.get(job_id)  # another process may own the job
            if fresh is not None:
                data = fresh.public()


def canceled_deliveries(job: Job) -> list[Delivery]:
    delivery = build_delivery(job, "canceled")
    return [delivery] if delivery else []


@routes.post("/v1/jobs/{job_id}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    job_id = request.match_info["job_id"]
    job = await engine.store.cancel_queued(job_id, deliveries=canceled_deliveries)
    if job is not None:  # was queued: canceled now, its terminal webhook with it
        engine.deliverer.wake()
        engine.events.publish(job)
        engine.metrics.jobs_finished.labels(generator=job.generator, status="canceled").inc()
        return web.json_response(job.public(), status=202)
    job = await get_job_or_404(engine, job_id)
    if job.status.is_terminal:
        raise problems.conflict(f"job {job_id} already ended {job.status.value}")
    job = await engine.store.request_cancel(job_id) or job
    engine.cancel_running(job_id)
    return web.json_response(job.public(), status=202)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body: dict[str, Any] = {"status": engine.state}
    if engine.setup_error:
        body["error"] = engine.setup_error
    return web.json_response(body, status=200 if engine.state == "ready" else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    engine.metrics.queue_depth.set(await engine.store.queued_count())
    return web.Response(body=generate_latest(engine.metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/assets/{key:.+}")
async def asset(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    resolve = getattr(engine.storage, "resolve_path", None)
    if resolve is None:
        raise problems.not_found("assets are not served here (storage is not local)")
    try:
        path = resolve(request.match_info["key"])
    except (ValueError, EngineError) as exc:
        raise problems.not_found("no such asset") from exc
    if not path.is_file():
        raise problems.not_found("no such asset")
    return web.FileResponse(path)
