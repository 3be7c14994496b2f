"""The job store on Redis: one queue and one job state for many API and worker processes.

Same interface as :class:`~ai_engine.jobs.store.SqliteJobStore`; every state change
is one Lua script (:mod:`ai_engine.jobs.redis_scripts`), so it is atomic across
processes. In brief:

- **Submit** checks the idempotency key ``(session_id, asset_id)``, the global
  limit and the session's share (:mod:`ai_engine.jobs.fairness`) and appends the
  job to its session's sub-queue, in one step.
- **Claim** (a) moves due retries back into their sub-queues, (b) takes over an
  attempt whose lease ran out (``XAUTOCLAIM`` on the consumer group), else (c) pops
  the next session's oldest job round-robin. The job is handed over as a fresh
  stream entry read through the consumer group (``XREADGROUP``): the entry sits in
  the group's pending list for as long as the attempt runs; its id is the
  attempt's fencing token.
- **Lease**: a running attempt's lease is its pending entry's idle time; this
  process renews it (``XCLAIM … JUSTID``) every third of ``lease_s``. A worker that
  dies stops renewing; after ``lease_s`` another worker takes the job over, counting
  the attempt; past ``max_attempts`` the job fails with ``job.too_many_attempts``.
- **Finish** writes the terminal state, records its webhook deliveries and
  acknowledges the entry (``XACK``) in one step, and only if the token still
  matches: a worker that lost its lease can no longer write over the new owner.
- **Webhook outbox**: pending deliveries per job in order; the head of each job's
  list sits in a sorted set by due time; claiming pushes it forward by a lease, so
  exactly one live process sends each attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ai_engine.jobs import redis_scripts as lua
from ai_engine.jobs.events import JobEvents
from ai_engine.jobs.fairness import retry_after_s, session_cap
from ai_engine.jobs.model import Job, JobStatus, utcnow
from ai_engine.jobs.redis_outbox import RedisOutbox, delivery_args
from ai_engine.jobs.shared_events import PubSubBridge, SharedJobEvents
from ai_engine.jobs.store import (
    Conflict,
    DeliveriesFor,
    Delivery,
    QueueFull,
    StoreUnavailable,
    job_from_json,
    job_to_json,
)

log = logging.getLogger(__name__)
GROUP = "workers"
MIN_REDIS = (6, 2)  # XAUTOCLAIM, LMOVE


def _unavailable(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"the job store (Redis) is unreachable: {exc}")


class RedisJobStore(RedisOutbox):
    """A :class:`~ai_engine.jobs.store.JobStore` shared by every process on one Redis."""

    def __init__(self, client: Redis, *, prefix: str, lease_s: float, max_attempts: int,
                 session_share: float, retention_s: float, delivery_lease_s: float) -> None:
        self._r = client
        self.p = prefix.rstrip(":") + ":"
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.session_share = session_share
        self.retention_s = max(1, int(retention_s))
        self.delivery_lease_s = delivery_lease_s
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.tokens: dict[str, str] = {}  # job id -> stream entry of the attempt run here
        self.lost: set[str] = set()
        self.released: dict[str, float] = {}  # job id -> when its task ended unfinished
        self.bridge: PubSubBridge | None = None
        self._on_cancel: Callable[[str], None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        s = {name: client.register_script(getattr(lua, name)) for name in (
            "SUBMIT", "CLAIM", "HEARTBEAT", "SAVE", "FINISH", "REQUEUE", "CANCEL_QUEUED",
            "REQUEST_CANCEL", "ADD", "DUE", "UPDATE_DELIVERY", "STOP_URL")}
        self._lua = s

    @classmethod
    async def open(cls, url: str, *, prefix: str = "ai_engine", lease_s: float = 30.0,
                   max_attempts: int = 3, session_share: float = 0.5,
                   retention_s: float = 7 * 24 * 3600, delivery_lease_s: float = 60.0,
                   events: JobEvents | None = None,
                   on_cancel: Callable[[str], None] | None = None,
                   on_wake: Callable[[], None] | None = None,
                   retries: int = 12) -> RedisJobStore:
        """Connect, check the server, create the consumer group, start listening.

        ``events`` receives other processes' job changes (when it is a
        :class:`SharedJobEvents`, only for watched jobs); ``on_cancel(job_id)`` is
        called when any process asks to cancel a running job; ``on_wake()`` when a
        job is queued anywhere. ``retries`` (with backoff up to 1 s) ride out a
        restart or a fail-over of Redis of several seconds.
        """
        # A bounded pool that makes callers wait for a connection (the default pool
        # fails past its size), so a burst of requests queues instead of failing.
        pool = BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=20, decode_responses=True,
            socket_connect_timeout=2, socket_timeout=10,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
            retry_on_error=[RedisConnectionError, RedisTimeoutError], health_check_interval=15)
        client = Redis.from_pool(pool)
        store = cls(client, prefix=prefix, lease_s=lease_s, max_attempts=max_attempts,
                    session_share=session_share, retention_s=retention_s,
                    delivery_lease_s=delivery_lease_s)
        try:
            await store._check_server()
            store._on_cancel = on_cancel
            store.bridge = PubSubBridge(client, prefix=store.p, origin=store.consumer,
                                        events=events, on_cancel=store._cancel_heard,
                                        on_wake=on_wake)
            await store.bridge.start()
        except BaseException:
            await client.aclose()
            raise
        if isinstance(events, SharedJobEvents):
            events.bridge = store.bridge
        store._heartbeat = asyncio.create_task(store._renew_leases(), name="leases")
        return store

    async def _check_server(self) -> None:
        try:
            info = await self._r.info("server")
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        version = tuple(int(x) for x in str(info["redis_version"]).split(".")[:2])
        if version < MIN_REDIS:
            raise RuntimeError(f"the shared queue needs Redis >= 6.2 (found "
                               f"{info['redis_version']})")
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await self._r.xgroup_create(self.p + "stream", GROUP, id="0", mkstream=True)

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self.bridge is not None:
            await self.bridge.close()
        await self._r.aclose()

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._lua[name](keys=keys, args=args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc

    # -- keys and records -----------------------------------------------------
    def _job(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}"

    def _idem(self, job: Job) -> str:
        return f"{self.p}idem:{job.session_id}/{job.asset_id}"

    def _channel(self, job_id: str) -> str:
        return f"{self.p}ev:{job_id}"

    def _message(self, job: Job, *, from_self: bool = True) -> str:
        assert self.bridge is not None
        return self.bridge.message(job, from_self=from_self)

    @staticmethod
    def _body(job: Job) -> str:
        """The job record without its request (stored once, in its own field)."""
        return job_to_json(dataclasses.replace(job, request={}))

    @staticmethod
    def _from_hash(h: dict[str, str]) -> Job:
        job = job_from_json(h["body"])
        job.request = json.loads(h["request"])
        job.status = JobStatus(h["status"])
        job.attempts = int(h["attempts"])
        job.cancel_requested = h.get("cancel") == "1"
        return job

    # -- jobs -------------------------------------------------------------------
    async def submit(self, job: Job, *, max_queue: int) -> tuple[Job, bool]:
        """Queue a new job, or return the existing one for its key (see SqliteJobStore)."""
        cap = session_cap(max_queue, self.session_share)
        for _ in range(3):
            outcome, value = await self._run("SUBMIT", [
                self._idem(job), self._job(job.job_id), f"{self.p}sq:{job.session_id}",
                f"{self.p}ring", f"{self.p}queued"], [
                job.job_id, job.session_id, self._body(job),
                json.dumps(job.request, separators=(",", ":")), job.request_hash, max_queue,
                cap, job.asset_id, f"{self.p}wake"])
            if outcome == "created":
                return job, True
            if outcome in ("full", "session_full"):
                raise QueueFull(retry_after_s=retry_after_s(int(value)))
            existing = await self.get(value)
            if existing is None:  # the key outlived its job (retention): free it
                await self._r.delete(self._idem(job))
                continue
            if existing.request_hash != job.request_hash:
                raise Conflict(existing)
            return existing, False
        raise StoreUnavailable("idempotency key kept changing")

    async def get(self, job_id: str) -> Job | None:
        try:
            h = await self._r.hgetall(self._job(job_id))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc
        return self._from_hash(cast(dict[str, str], h)) if h else None

    async def claim(self) -> Job | None:
        """Take a job: an expired attempt first, else the next session's oldest job."""
        for _ in range(16):
            got = await self._run("CLAIM", [
                f"{self.p}stream", f"{self.p}ring", f"{self.p}delayed", f"{self.p}queued"], [
                self.p, GROUP, self.consumer, time.time(), int(self.lease_s * 1000),
                self.max_attempts])
            if got[0] == "empty":
                return None
            if got[0] == "skip":
                continue
            job_id, token = got[1], got[2]
            self.tokens[job_id] = token
            try:
                job = await self._start(got[0], job_id)
            except BaseException:
                self.release(job_id)  # left to another claim once the lease runs out
                raise
            if job is not None:
                return job
        return None

    async def _start(self, outcome: str, job_id: str) -> Job | None:
        job = await self.get(job_id)
        if job is None:
            self.release(job_id)
            return None
        if outcome == "exhausted":
            await self._fail_exhausted(job)
            return None
        if outcome == "reclaimed":
            log.warning("job %s: its worker stopped renewing the lease; attempt %d of %d",
                        job_id, job.attempts, self.max_attempts)
        job.status, job.stage, job.progress = JobStatus.RUNNING, None, 0
        job.started_at = job.started_at or utcnow()
        await self.save(job)
        return job

    async def _fail_exhausted(self, job: Job) -> None:
        from ai_engine.webhooks.events import build_delivery  # webhooks build on jobs

        job.status, job.finished_at, job.stage = JobStatus.FAILED, utcnow(), None
        job.error = {"code": "job.too_many_attempts",
                     "message": f"the job was interrupted {job.attempts} times"}
        delivery = build_delivery(job, "failed")
        await self._finish(job, [delivery] if delivery else [], from_self=False)
        log.error("job %s failed: interrupted %d times", job.job_id, job.attempts)

    async def save(self, job: Job) -> None:
        token = self.tokens.get(job.job_id, "")
        ok = await self._run("SAVE", [self._job(job.job_id)], [
            token, self._body(job), self._channel(job.job_id), self._message(job)])
        if not ok:
            self._lease_lost(job.job_id)

    async def finish(self, job: Job, deliveries: list[Delivery]) -> None:
        """Terminal state, its deliveries and the acknowledgement, atomically."""
        await self._finish(job, deliveries, from_self=True)

    async def _finish(self, job: Job, deliveries: list[Delivery], *, from_self: bool) -> None:
        token = self.tokens.get(job.job_id, "")
        args: list[Any] = [self.p, GROUP, token, job.status.value, self._body(job), job.attempts,
                           self.retention_s, self._channel(job.job_id),
                           self._message(job, from_self=from_self), *delivery_args(deliveries)]
        out = await self._run("FINISH", [self._job(job.job_id), f"{self.p}stream",
                                         self._idem(job)], args)
        lost = out[0] != "1"
        if lost and job.job_id in self.tokens and job.job_id not in self.lost:
            log.warning("job %s: not finished here: its lease passed to another worker",
                        job.job_id)
        self._forget(job.job_id)  # this attempt writes nothing more
        if not lost:
            self._set_ids(deliveries, out[1:])

    async def requeue(self, job: Job, *, delay_s: float) -> None:
        job.status, job.stage, job.progress = JobStatus.QUEUED, None, 0
        job.not_before = time.time() + delay_s
        token = self.tokens.get(job.job_id, "")
        self._forget(job.job_id)
        ok = await self._run("REQUEUE", [
            self._job(job.job_id), f"{self.p}stream", f"{self.p}delayed", f"{self.p}ring",
            f"{self.p}queued"], [
            self.p, GROUP, token, self._body(job), job.attempts, job.not_before,
            "1" if delay_s > 0 else "0", self._channel(job.job_id), self._message(job),
            job.job_id])
        if not ok:
            log.warning("job %s: not requeued here: its lease passed to another worker",
                        job.job_id)

    async def cancel_queued(self, job_id: str, *, deliveries: DeliveriesFor | None = None
                            ) -> Job | None:
        """Cancel a job that is still queued and enqueue its ``deliveries``; returns it, or
        None if it is not queued."""
        job = await self.get(job_id)
        if job is None or job.status != JobStatus.QUEUED:
            return None
        job.status, job.finished_at, job.cancel_requested = JobStatus.CANCELED, utcnow(), True
        job.error = {"code": "job.canceled", "message": "canceled before it started"}
        ok = await self._run("CANCEL_QUEUED", [
            self._job(job_id), f"{self.p}delayed", f"{self.p}ring", f"{self.p}queued",
            f"{self.p}sq:{job.session_id}", self._idem(job)], [
            job_id, job.session_id, self._body(job), self.retention_s, self._channel(job_id),
            self._message(job)])
        if ok and deliveries:
            await self.add_deliveries(deliveries(job))
        return job if ok else None

    async def request_cancel(self, job_id: str) -> Job | None:
        """Flag a running job for cancellation and tell every process at once."""
        assert self.bridge is not None
        status = await self._run("REQUEST_CANCEL", [self._job(job_id)], [
            self.bridge.cancel_channel, job_id])
        return await self.get(job_id) if status else None

    def release(self, job_id: str) -> None:
        """The task running ``job_id`` here ended. Had it not written a final state or
        requeued the job, its lease is no longer renewed and another worker takes the
        job over once it runs out."""
        if job_id in self.tokens:
            self.released[job_id] = time.monotonic()

    def _forget(self, job_id: str) -> None:
        self.tokens.pop(job_id, None)
        self.lost.discard(job_id)
        self.released.pop(job_id, None)

    async def recover(self, *, max_attempts: int) -> tuple[list[Job], list[Job]]:
        """Nothing to do at start: attempts of dead workers are taken over when their
        lease runs out, by whichever worker claims next (see :meth:`claim`)."""
        return [], []

    async def queued_count(self) -> int:
        try:
            return int(await self._r.get(f"{self.p}queued") or 0)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc

    # -- leases -------------------------------------------------------------------
    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.lease_s / 3))
            stale = time.monotonic() - 2 * self.lease_s
            for job_id in [j for j, at in self.released.items() if at < stale]:
                self._forget(job_id)
            held = {j: t for j, t in self.tokens.items()
                    if j not in self.lost and j not in self.released}
            if not held:
                continue
            args: list[Any] = [self.p, GROUP, self.consumer]
            for job_id, token in held.items():
                args += [job_id, token]
            try:
                lost = await self._lua["HEARTBEAT"](keys=[f"{self.p}stream"], args=args)
            except (RedisError, OSError) as exc:
                log.warning("renewing leases failed: %s", exc)
                continue
            for job_id in lost:
                if self.tokens.get(job_id) == held[job_id]:
                    self._lease_lost(job_id)

    def _lease_lost(self, job_id: str) -> None:
        """Another worker owns the job now (this one stalled past its lease): stop it here.

        The token stays, so every later write of this attempt is refused."""
        if job_id in self.tokens and job_id not in self.lost:
            self.lost.add(job_id)
            log.warning("job %s: lease lost to another worker; stopping it here", job_id)
            if self._on_cancel is not None:
                self._on_cancel(job_id)

    def _cancel_heard(self, job_id: str) -> None:
        if job_id in self.tokens and self._on_cancel is not None:
            self._on_cancel(job_id)
