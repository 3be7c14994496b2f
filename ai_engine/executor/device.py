"""One executor per device: claims queued jobs and runs them.

Each executor owns one thread for its device (models are not thread-safe and
a GPU runs one generation at a time) and runs up to ``concurrency`` jobs at
once, so while the device generates job N the CPU pool fetches job N+1 and
exports job N-1. At drain it stops claiming, lets running jobs finish within
the grace period, and puts back into the queue the ones that could not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from ai_engine.executor.runner import JobRunner, Services
from ai_engine.generators.base import Generator
from ai_engine.generators.registry import load_generator
from ai_engine.jobs.model import Job

log = logging.getLogger(__name__)


class DeviceExecutor:
    def __init__(self, services: Services, *, device: str, generator_names: list[str],
                 concurrency: int = 3) -> None:
        self.s = services
        self.device = device
        self.generator_names = generator_names
        self.concurrency = concurrency
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"device-{device}")
        self.generators: dict[str, Generator] = {}
        self.runner: JobRunner | None = None
        self._wake = asyncio.Event()
        self._running: dict[str, tuple[asyncio.Task[None], threading.Event]] = {}
        self._claiming = True
        self._loop_task: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """Load and warm up every generator for this device, on the device thread."""
        loop = asyncio.get_running_loop()
        for name in self.generator_names:
            self.generators[name] = await loop.run_in_executor(
                self.pool, lambda n=name: load_generator(  # type: ignore[misc]
                    n, models_dir=self.s.settings.models_dir, device=self.device,
                    settings=self.s.settings))
        self.runner = JobRunner(self.s, device=self.device, generators=self.generators,
                                device_pool=self.pool)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._claim_loop(), name=f"executor-{self.device}")

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> bool:
        """Ask a running job to stop at its next stage boundary or generator step."""
        entry = self._running.get(job_id)
        if entry is None:
            return False
        entry[1].set()
        return True

    async def _claim_loop(self) -> None:
        while self._claiming:
            if len(self._running) >= self.concurrency:
                await self._wait(1.0)
                continue
            try:
                job = await self.s.store.claim()
            except Exception:
                log.exception("claiming a job failed")
                await self._wait(1.0)
                continue
            if job is None:
                await self._wait(0.5)
                continue
            if not self._claiming:  # the drain began during the claim: give it back
                job.attempts = max(0, job.attempts - 1)
                await self.s.store.requeue(job, delay_s=0)
                self.s.store.release(job.job_id)
                return
            self._start(job)

    async def _wait(self, timeout_s: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=timeout_s)

    def _start(self, job: Job) -> None:
        assert self.runner is not None
        cancel = threading.Event()
        self.s.metrics.running.labels(device=self.device).inc()
        task = asyncio.create_task(self.runner.run(job, cancel), name=f"job-{job.job_id}")
        self._running[job.job_id] = (task, cancel)

        def done(_: asyncio.Task[None], job_id: str = job.job_id) -> None:
            self._running.pop(job_id, None)
            self.s.store.release(job_id)  # a shared queue stops renewing its lease
            self.s.metrics.running.labels(device=self.device).dec()
            self._wake.set()

        task.add_done_callback(done)

    async def drain(self, *, timeout_s: float) -> None:
        """Stop claiming; finish running jobs within ``timeout_s``, requeue the rest."""
        self._claiming = False
        self._wake.set()
        if self._loop_task is not None:
            # let the loop leave between two claims: cancelling it inside a claim could
            # leave a job marked running with no task to run it
            try:
                await asyncio.wait_for(asyncio.shield(self._loop_task), timeout=10.0)
            except TimeoutError:
                self._loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._loop_task
        running = dict(self._running)
        if running:
            log.info("draining %s: waiting for %d running jobs", self.device, len(running))
            await asyncio.wait([t for t, _ in running.values()], timeout=timeout_s)
        for job_id, (task, cancel) in running.items():
            if task.done():
                continue
            cancel.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            job = await self.s.store.get(job_id)
            if job is not None and not job.status.is_terminal:
                job.attempts = max(0, job.attempts - 1)  # the drain, not the job, stopped it
                await self.s.store.requeue(job, delay_s=0)
                log.info("requeued job %s at drain", job_id)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
