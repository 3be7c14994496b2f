"""``ai-engine worker``: executors only, taking jobs from the shared queue (``QUEUE_URL``).

A worker runs one executor per entry of ``DEVICES`` (one process per GPU is the
recommended layout: ``AI_ENGINE_DEVICES=cuda:N``; docs/scaling.md says why) and a
webhook deliverer over the shared outbox. It accepts no jobs over HTTP; it serves
only ``/healthz``, ``/readyz`` and ``/metrics`` on ``HOST:PORT`` for probes.
SIGTERM drains: running jobs get ``DRAIN_TIMEOUT_S`` to finish, the rest go back
to the queue for another worker.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from ai_engine.api.routes import healthz, metrics, readyz
from ai_engine.config import Settings
from ai_engine.engine import ENGINE, Engine

log = logging.getLogger(__name__)


def create_worker_app(settings: Settings) -> web.Application:
    """The worker process: an engine with executors, and the probe routes."""
    engine = Engine(settings, run_executors=True)
    app = web.Application()
    app[ENGINE] = engine
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await engine.start()
        yield
        await engine.stop()

    async def on_shutdown(_: web.Application) -> None:
        engine.state = "draining"

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    return app


def check_worker_settings(settings: Settings) -> list[str]:
    """Problems that stop a worker (first) or that deserve a warning (the rest)."""
    problems = []
    if not settings.queue_url:
        problems.append("`ai-engine worker` takes jobs from a shared queue: set "
                        "AI_ENGINE_QUEUE_URL (redis://...); with the embedded queue, "
                        "`ai-engine serve` runs the executors")
        return problems
    if not settings.webhook_secret:
        problems.append("AI_ENGINE_WEBHOOK_SECRET is not set: every process must sign "
                        "with the same secret (or share DATA_DIR, where it is stored)")
    if settings.storage == "local" and not settings.public_url:
        problems.append("local storage with a shared queue: set AI_ENGINE_PUBLIC_URL to an "
                        "API process that shares this DATA_DIR, or use S3 storage, so that "
                        "asset URLs point at a server that has the files")
    return problems


def run_worker(settings: Settings) -> int:
    problems = check_worker_settings(settings)
    if problems and not settings.queue_url:
        log.error("%s", problems[0])
        return 2
    for problem in problems:
        log.warning("%s", problem)
    app = create_worker_app(settings)
    log.info("worker: probes on http://%s:%d, queue %s", settings.host, settings.port,
             settings.queue_url.split("@")[-1])
    web.run_app(app, host=settings.host, port=settings.port, print=None,
                shutdown_timeout=settings.drain_timeout_s + 5, access_log=None)
    return 0
