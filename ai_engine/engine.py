"""The engine: every long-lived part of one service process, built at start.

``Engine.start`` opens the parts in order (store, fetcher, storage, CPU pool,
webhook deliverer, executors) and ``Engine.stop`` drains and closes them in
reverse. Executors load their generators in the background, so liveness
answers at once and readiness turns ``ready`` once every model is warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from aiohttp import web

from ai_engine.api import problems
from ai_engine.config import Settings
from ai_engine.executor.device import DeviceExecutor
from ai_engine.executor.runner import Services
from ai_engine.fetch import SafeFetcher
from ai_engine.generators.registry import resolve_auto
from ai_engine.imaging.edit import load_editor
from ai_engine.imaging.segment import load_segmenter
from ai_engine.jobs.events import JobEvents
from ai_engine.jobs.factory import new_job_events, open_job_store
from ai_engine.jobs.model import JobStatus, utcnow
from ai_engine.jobs.store import JobStore
from ai_engine.metrics import Metrics
from ai_engine.storage import open_storage
from ai_engine.storage.base import Storage
from ai_engine.webhooks.delivery import WebhookDeliverer
from ai_engine.webhooks.events import Signer, build_delivery, load_or_create_secret

log = logging.getLogger(__name__)
State = Literal["starting", "ready", "draining", "setup_failed"]


def weights_present(settings: Settings) -> set[str]:
    """Learned generators whose weights are present in MODELS_DIR."""
    try:
        from ai_engine.models_inventory import generators_with_weights
    except ImportError:
        return set()
    return set(generators_with_weights(settings.models_dir))


def resolve_devices(settings: Settings) -> list[str]:
    if settings.devices:
        return list(settings.devices)
    try:
        import torch
    except ImportError:
        return ["cpu"]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] or ["cpu"]


class Engine:
    def __init__(self, settings: Settings, *, run_executors: bool = True) -> None:
        self.settings = settings
        self.run_executors = run_executors
        self.metrics = Metrics()
        self.events: JobEvents = new_job_events(settings)
        self.state: State = "starting"
        self.setup_error: str | None = None
        self.executors: list[DeviceExecutor] = []
        self.available: set[str] = set()
        self.auto_generator = "silhouette"
        self._tasks: list[asyncio.Task[None]] = []
        self._pool: ThreadPoolExecutor | None = None

    # -- parts, set by start() ----------------------------------------------
    store: JobStore
    fetcher: SafeFetcher
    storage: Storage
    deliverer: WebhookDeliverer
    services: Services

    async def start(self) -> None:
        s = self.settings
        self.store = await open_job_store(
            s, events=self.events, on_cancel=self.cancel_running,
            on_wake=self.wake_executors if self.run_executors else None)
        self.fetcher = SafeFetcher(allow_private=s.allow_private_urls, timeout_s=s.fetch_timeout,
                                   max_bytes=s.fetch_max_bytes,
                                   max_redirects=s.fetch_max_redirects)
        secret = load_or_create_secret(s.webhook_secret, s.data_dir)
        # local asset URLs are signed with a key derived from the (shared) webhook secret,
        # so every process of a deployment can check the URLs any other one made
        signing_key = hashlib.sha256(b"ai-engine asset urls\n" + secret.encode()).digest()
        self.storage = await open_storage(s, signing_key=signing_key)
        self._pool = ThreadPoolExecutor(max_workers=max(1, s.cpu_workers),
                                        thread_name_prefix="cpu")
        self.deliverer = WebhookDeliverer(
            self.store, self.fetcher, Signer(secret), max_age_s=s.webhook_max_age_s,
            backoff_base_s=s.webhook_backoff_base_s, backoff_max_s=s.webhook_backoff_max_s,
            timeout_s=s.webhook_timeout_s,
            metrics=self.metrics)
        self.services = Services(settings=s, store=self.store, events=self.events,
                                 fetcher=self.fetcher, storage=self.storage,
                                 metrics=self.metrics, deliverer=self.deliverer,
                                 cpu_pool=self._pool)
        self._tasks.append(asyncio.create_task(self.deliverer.run(), name="webhooks"))
        self.auto_generator = resolve_auto(s.models_dir)
        self.available = {"silhouette"} | weights_present(s)
        if s.generator != "auto":
            self.available.add(s.generator)
        if self.run_executors:
            self._tasks.append(asyncio.create_task(self._start_executors(), name="setup"))
        else:
            self.state = "ready"

    async def _start_executors(self) -> None:
        try:
            await self._recover()
            loop = asyncio.get_running_loop()
            self.services.segmenter = await loop.run_in_executor(None, load_segmenter,
                                                                 self.settings)
            self.services.editor = await loop.run_in_executor(None, load_editor, self.settings)
            names = sorted(self.available)
            for device in resolve_devices(self.settings):
                executor = DeviceExecutor(self.services, device=device, generator_names=names)
                await executor.load()
                self.executors.append(executor)
            for executor in self.executors:
                executor.start()
            if self.state == "starting":
                self.state = "ready"
                log.info("ready: generators %s on %s (auto -> %s)", names,
                         [e.device for e in self.executors], self.auto_generator)
        except Exception as exc:
            log.exception("setup failed")
            self.state, self.setup_error = "setup_failed", f"{type(exc).__name__}: {exc}"

    async def _recover(self) -> None:
        requeued, exhausted = await self.store.recover(max_attempts=self.settings.max_attempts)
        for job in requeued:
            log.info("recovered job %s (attempt %d of %d)", job.job_id, job.attempts + 1,
                     self.settings.max_attempts)
        for job in exhausted:
            job.status, job.finished_at = JobStatus.FAILED, utcnow()
            job.error = {"code": "job.too_many_attempts",
                         "message": f"the job was interrupted {job.attempts} times"}
            delivery = build_delivery(job, "failed")
            await self.store.finish(job, [delivery] if delivery else [])
        self.deliverer.wake()

    async def stop(self) -> None:
        """Drain: stop accepting, finish or requeue running jobs, flush webhooks, close."""
        self.state = "draining"
        timeout_s = self.settings.drain_timeout_s
        await asyncio.gather(*(e.drain(timeout_s=timeout_s) for e in self.executors))
        await self.deliverer.flush(timeout_s=min(10.0, timeout_s))
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for executor in self.executors:
            executor.close()
        await self.storage.close()
        await self.fetcher.aclose()
        await self.store.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- used by the views ---------------------------------------------------
    def require_accepting(self) -> None:
        if self.state != "ready":
            raise problems.unavailable(self.state)

    def resolve_generator(self, name: str | None) -> str:
        """The generator a job asking for ``name`` gets (None: the configured default;
        ``auto``: Hunyuan3D-2 with weights and a GPU, else silhouette)."""
        name = name or self.settings.generator
        return self.auto_generator if name == "auto" else name

    def wake_executors(self) -> None:
        for executor in self.executors:
            executor.wake()

    def cancel_running(self, job_id: str) -> None:
        for executor in self.executors:
            executor.cancel(job_id)

    def base_url(self, request: web.Request) -> str:
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        return f"{request.scheme}://{request.host}"


ENGINE = web.AppKey("engine", Engine)
