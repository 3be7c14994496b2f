"""Run one job through its stages, in order, persisting its state between them.

fetch -> preprocess (decode, cut out, frame) -> generate -> export -> upload -> notify

The runner owns ordering, per-stage timeouts, cancellation at stage
boundaries (and at each generator step), progress, and the terminal write,
which is shielded from cancellation and enqueues the terminal webhook in the
same transaction. Blocking work never runs on the event loop: the generator
runs on the device's single thread, decoding and exporting on the CPU pool.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from ai_engine import imaging
from ai_engine.config import Settings
from ai_engine.errors import Canceled, EngineError, StageTimeout, translate
from ai_engine.executor.outputs import export_outputs
from ai_engine.fetch import SafeFetcher, decode_base64_image
from ai_engine.generators.base import Generator, GeneratorOutput
from ai_engine.imaging.edit import Editor
from ai_engine.imaging.params import split_params, wants_edit
from ai_engine.imaging.segment import Segmenter
from ai_engine.jobs.events import JobEvents
from ai_engine.jobs.model import Job, JobStatus, Stage, overall_progress, utcnow
from ai_engine.jobs.store import JobStore
from ai_engine.metrics import Metrics
from ai_engine.storage.base import Storage, asset_key
from ai_engine.webhooks.delivery import WebhookDeliverer
from ai_engine.webhooks.events import build_delivery, terminal_event

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Services:
    """What every job needs from the process, built once at start."""

    settings: Settings
    store: JobStore
    events: JobEvents
    fetcher: SafeFetcher
    storage: Storage
    metrics: Metrics
    deliverer: WebhookDeliverer
    cpu_pool: Executor
    segmenter: Segmenter | None = None  # learned background removal, loaded at start
    editor: Editor | None = None  # the optional image-edit stage


class JobRunner:
    def __init__(self, services: Services, *, device: str,
                 generators: dict[str, Generator], device_pool: Executor) -> None:
        self.s = services
        self.device = device
        self.generators = generators
        self.device_pool = device_pool

    async def run(self, job: Job, cancel: threading.Event) -> None:
        """Run ``job`` (already claimed, status running) to a terminal state or a requeue."""
        ctx = _JobContext(self, job, cancel)
        try:
            await ctx.execute()
        except asyncio.CancelledError:
            raise  # drain: the executor requeues the job
        except Canceled:
            await ctx.end(JobStatus.CANCELED, {"code": Canceled.code, "message": "canceled"})
        except Exception as exc:  # every other failure is translated, stored, notified
            err = translate(exc)
            if not isinstance(exc, EngineError):
                log.exception("job %s failed unexpectedly", job.job_id)
            if err.retryable and job.attempts < self.s.settings.max_attempts:
                stored = await self.s.store.get(job.job_id)
                if cancel.is_set() or (stored is not None and stored.cancel_requested):
                    # canceled while this attempt failed: end here, never run it again
                    await ctx.end(JobStatus.CANCELED,
                                  {"code": Canceled.code, "message": "canceled"})
                    return
                delay_s = min(60.0, 2.0 ** job.attempts)
                log.warning("job %s: %s (%s), retry in %.0fs", job.job_id, err.code,
                            err.message, delay_s)
                job.error = err.to_dict()
                await asyncio.shield(self.s.store.requeue(job, delay_s=delay_s))
                self.s.events.publish(job)
                return
            log.info("job %s failed: %s: %s", job.job_id, err.code, err.message)
            await ctx.end(JobStatus.FAILED, err.to_dict())


class _JobContext:
    """The state of one job's run: its stage, timings and progress reporting."""

    def __init__(self, runner: JobRunner, job: Job, cancel: threading.Event) -> None:
        self.r = runner
        self.s = runner.s
        self.job = job
        self.cancel = cancel
        self.stage = Stage.FETCHING
        self._last_save = 0.0
        self._pending_save: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()

    async def execute(self) -> None:
        job, settings = self.job, self.s.settings
        job.error = None
        generator = self.r.generators.get(job.generator)
        if generator is None:
            raise EngineError(f"generator {job.generator!r} is not loaded on {self.r.device}",
                              code="setup.generator_unavailable")
        await self.enqueue_event("started")
        # 1. fetch the image bytes
        data = await self.stage_run(Stage.FETCHING, self.fetch())
        # 2. decode, [edit], cut out, frame as the generator expects
        imaging_params, generator_params = split_params(job.request.get("params") or {})
        editor = self.s.editor if wants_edit(settings, imaging_params) else None
        cutout = await self.stage_run(Stage.PREPROCESSING, self.in_pool(
            self.s.cpu_pool, imaging.prepare, data, max_pixels=settings.max_image_pixels,
            max_bytes=settings.fetch_max_bytes, max_frames=settings.max_image_frames,
            segmenter=self.s.segmenter, editor=editor, seed=job.seed,
            on_progress=self.progress_from_thread if editor else None))
        framed = await self.stage_run(Stage.PREPROCESSING, self.in_pool(
            self.s.cpu_pool, generator.frame, cutout.rgba), new_stage=False)
        if imaging_params.intermediates:
            await self.store_intermediates(cutout)
        # 3. generate on the device thread
        params = type(generator).Params.model_validate(generator_params)
        output: GeneratorOutput = await self.stage_run(Stage.GENERATING, self.in_pool(
            self.r.device_pool, generator, framed, params=params, seed=job.seed,
            on_progress=self.progress_from_thread))
        # 4. export every format and a thumbnail
        formats = list(job.request.get("formats") or ["glb"])
        files, thumb = await self.stage_run(Stage.EXPORTING, self.in_pool(
            self.s.cpu_pool, export_outputs, output, formats))
        # 5. upload
        await self.stage_run(Stage.UPLOADING, self.upload(files, thumb))
        # 6. notify: terminal write + terminal webhook
        self.stage = Stage.NOTIFYING
        await self.end(JobStatus.SUCCEEDED, None)

    async def fetch(self) -> bytes:
        req, settings = self.job.request, self.s.settings
        if req.get("image_base64"):
            return await asyncio.to_thread(decode_base64_image, req["image_base64"],
                                           max_bytes=settings.fetch_max_bytes)
        return await self.s.fetcher.fetch_image(str(req["image_url"]))

    def key(self, name: str) -> str:
        job, settings = self.job, self.s.settings
        return asset_key(settings.s3_prefix if settings.storage == "s3" else "",
                         job.session_id, job.asset_id, job.job_id, name)

    async def store_intermediates(self, cutout: imaging.Cutout) -> None:
        """The cut-out (and the edited image) as PNGs beside the asset."""
        pngs = {"cutout": await self.in_pool(self.s.cpu_pool, cutout.cutout_png)}
        edited = await self.in_pool(self.s.cpu_pool, cutout.edited_png)
        if edited is not None:
            pngs["edited"] = edited
        for name, data in pngs.items():
            stored = await self.s.storage.put(self.key(f"{name}.png"), data,
                                              content_type="image/png")
            self.job.intermediates[name] = {"url": stored.url, "key": stored.key}
        self.job.intermediates["cutout_method"] = cutout.method

    async def upload(self, files: list[Any], thumb: Any) -> None:
        job = self.job
        assets = []
        for i, f in enumerate(files):
            stored = await self.s.storage.put(self.key(f.name), f.data,
                                              content_type=f.content_type)
            assets.append({"format": f.format, "url": stored.url, "key": stored.key,
                           "bytes": stored.bytes, "sha256": stored.sha256,
                           "content_type": stored.content_type})
            self.progress((i + 1) / (len(files) + 1))
        if thumb is not None:
            stored = await self.s.storage.put(self.key(thumb.name), thumb.data,
                                              content_type=thumb.content_type)
            job.thumbnail = {"url": stored.url, "key": stored.key}
        job.assets = assets

    async def stage_run(self, stage: Stage, work: Awaitable[T], *, new_stage: bool = True) -> T:
        """Run one stage's work with its timeout, after a cancellation check."""
        if new_stage:
            await self.enter(stage)
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(work, timeout=self.s.settings.stage_timeout_s)
        except TimeoutError as exc:
            # the work may go on in its thread: the next generator step sees this and stops
            self.cancel.set()
            raise StageTimeout(f"stage {stage.value} took longer than "
                               f"{self.s.settings.stage_timeout_s:.0f}s") from exc
        finally:
            elapsed = time.perf_counter() - started
            key = stage.value
            self.job.timings[key] = round(self.job.timings.get(key, 0.0) + elapsed, 4)
            self.s.metrics.stage_seconds.labels(stage=key, generator=self.job.generator
                                                ).observe(elapsed)

    async def enter(self, stage: Stage) -> None:
        await self.check_cancel()
        self.stage = stage
        self.job.stage = stage
        self.job.progress = overall_progress(stage, 0.0)
        await self.save()
        await self.enqueue_event("progress")

    async def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Canceled("canceled")
        stored = await self.s.store.get(self.job.job_id)
        if stored is not None and stored.cancel_requested:
            self.cancel.set()
            raise Canceled("canceled")

    def in_pool(self, pool: Executor, fn: Callable[..., T], *args: Any,
                **kwargs: Any) -> Awaitable[T]:
        return self._loop.run_in_executor(pool, lambda: fn(*args, **kwargs))

    def progress_from_thread(self, fraction: float) -> None:
        """Generator progress callback (device thread): report, and stop if canceled."""
        if self.cancel.is_set():
            raise Canceled("canceled")
        self._loop.call_soon_threadsafe(self.progress, fraction)

    def progress(self, fraction: float) -> None:
        if self.job.status.is_terminal:
            return  # a late report from work that outlived its stage
        value = overall_progress(self.stage, fraction)
        if value <= self.job.progress:
            return
        self.job.progress = value
        self.s.events.publish(self.job)
        now = time.monotonic()
        if now - self._last_save > 0.5:  # throttle writes; SSE still sees every step
            self._last_save = now
            if self._pending_save is None or self._pending_save.done():
                self._pending_save = asyncio.ensure_future(self.s.store.save(self.job))

    async def save(self) -> None:
        await self.s.store.save(self.job)
        self.s.events.publish(self.job)

    async def enqueue_event(self, event: str) -> None:
        delivery = build_delivery(self.job, event)
        if delivery is not None:
            await self.s.store.add_deliveries([delivery])
            self.s.deliverer.wake()

    async def end(self, status: JobStatus, error: dict[str, Any] | None) -> None:
        """The terminal write, shielded so a drain or disconnect cannot lose it."""
        job = self.job
        if self._pending_save is not None:
            await asyncio.shield(self._pending_save)
        job.status, job.error, job.finished_at = status, error, utcnow()
        job.stage = None if status != JobStatus.SUCCEEDED else Stage.NOTIFYING
        if status == JobStatus.SUCCEEDED:
            job.progress = 100
        delivery = build_delivery(job, terminal_event(job))
        await asyncio.shield(self.s.store.finish(job, [delivery] if delivery else []))
        self.s.events.publish(job)
        self.s.deliverer.wake()
        m = self.s.metrics
        m.jobs_finished.labels(generator=job.generator, status=status.value).inc()
        if error:
            m.job_errors.labels(code=error["code"]).inc()
