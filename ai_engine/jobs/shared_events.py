"""Job changes and cancellations between processes, over Redis pub/sub.

Three kinds of channel (``p`` = the key prefix):

- ``p:ev:<job_id>`` — the job's public form after each stored change. A process
  subscribes while one of its SSE clients (or a synchronous view) watches the job,
  and republishes what it hears into its in-process :class:`JobEvents`.
- ``p:cancel`` — ids of running jobs to stop; every process hears them and stops
  the job if one of its executors runs it (the stored flag covers a missed message:
  the runner reads it at every stage boundary).
- ``p:wake`` — a job was queued; idle executors try to claim at once instead of
  at their next poll.

Pub/sub is best effort (a message sent while a process is disconnected is lost):
the store stays the truth, and SSE re-reads it every 15 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ai_engine.jobs.events import JobEvents
from ai_engine.jobs.model import Job, JobStatus, Stage

log = logging.getLogger(__name__)


def job_from_public(data: dict[str, Any]) -> Job:
    """A :class:`Job` carrying the fields of its public form (no request body)."""
    parse = datetime.fromisoformat
    return Job(
        job_id=data["job_id"], session_id=data["session_id"], asset_id=data["asset_id"],
        request={}, request_hash="", generator=data["generator"], seed=data["seed"],
        status=JobStatus(data["status"]), stage=Stage(data["stage"]) if data["stage"] else None,
        progress=data["progress"], created_at=parse(data["created_at"]),
        started_at=parse(data["started_at"]) if data["started_at"] else None,
        finished_at=parse(data["finished_at"]) if data["finished_at"] else None,
        assets=data["assets"], thumbnail=data["thumbnail"],
        intermediates=data.get("intermediates") or {}, error=data["error"],
        timings=data["timings"], attempts=data.get("attempts", 0))


class SharedJobEvents(JobEvents):
    """JobEvents that also hear changes made by other processes while a job is watched."""

    def __init__(self) -> None:
        super().__init__()
        self._watch_counts: dict[str, int] = {}
        self.bridge: PubSubBridge | None = None

    def subscribe(self, job_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue = super().subscribe(job_id)
        self._watch_counts[job_id] = self._watch_counts.get(job_id, 0) + 1
        if self._watch_counts[job_id] == 1 and self.bridge is not None:
            self.bridge.watch(job_id)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        super().unsubscribe(job_id, queue)
        count = self._watch_counts.get(job_id, 0) - 1
        if count > 0:
            self._watch_counts[job_id] = count
            return
        self._watch_counts.pop(job_id, None)
        if self.bridge is not None:
            self.bridge.unwatch(job_id)


class PubSubBridge:
    """One pub/sub connection per process: cancel and wake channels, watched jobs."""

    def __init__(self, client: Redis, *, prefix: str, origin: str, events: JobEvents | None,
                 on_cancel: Callable[[str], None] | None,
                 on_wake: Callable[[], None] | None) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.prefix = prefix
        self.origin = origin  # messages this process sent itself are skipped
        self.events = events
        self.on_cancel = on_cancel
        self.on_wake = on_wake
        self.cancel_channel = f"{prefix}cancel"
        self.wake_channel = f"{prefix}wake"
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def job_channel(self, job_id: str) -> str:
        return f"{self.prefix}ev:{job_id}"

    def message(self, job: Job, *, from_self: bool = True) -> str:
        """The event message for ``job``; ``from_self=False`` reaches this process too."""
        return json.dumps({"o": self.origin if from_self else "", "d": job.public()},
                          separators=(",", ":"))

    async def start(self) -> None:
        channels = [self.cancel_channel] + ([self.wake_channel] if self.on_wake else [])
        await self._pubsub.subscribe(*channels)
        self._task = asyncio.create_task(self._listen(), name="pubsub")

    def watch(self, job_id: str) -> None:
        self._spawn(self._pubsub.subscribe(self.job_channel(job_id)))

    def unwatch(self, job_id: str) -> None:
        self._spawn(self._pubsub.unsubscribe(self.job_channel(job_id)))

    def _spawn(self, coro: Any) -> None:
        async def run() -> None:
            try:
                await coro
            except (RedisError, OSError) as exc:  # the listener re-subscribes on reconnect
                log.warning("pub/sub (un)subscribe failed: %s", exc)

        task = asyncio.create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _listen(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("pub/sub connection lost (%s); reconnecting", exc)
                await asyncio.sleep(0.5)
                continue
            if message is not None and message.get("type") == "message":
                try:
                    self._dispatch(message["channel"], message["data"])
                except Exception:
                    log.exception("bad pub/sub message on %s", message.get("channel"))
            elif message is None and not self._pubsub.subscribed:
                await asyncio.sleep(0.1)  # nothing subscribed yet: get_message returns at once

    def _dispatch(self, channel: str, data: str) -> None:
        if channel == self.cancel_channel:
            if self.on_cancel is not None:
                self.on_cancel(data)
        elif channel == self.wake_channel:
            if self.on_wake is not None:
                self.on_wake()
        elif self.events is not None:
            body = json.loads(data)
            if body["o"] != self.origin:
                self.events.publish(job_from_public(body["d"]))

    async def close(self) -> None:
        for task in [self._task, *self._pending]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
