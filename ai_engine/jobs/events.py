"""In-process publication of job changes, for server-sent events.

Every save of a running job publishes its public form; each SSE client holds
a bounded queue (a slow client misses intermediate progress, never the
terminal event, which is always delivered last).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

from ai_engine.jobs.model import Job


class JobEvents:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)

    def subscribe(self, job_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=64)
        self._subscribers[job_id].add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        subs = self._subscribers.get(job_id)
        if subs is not None:
            subs.discard(queue)
            if not subs:
                del self._subscribers[job_id]

    def publish(self, job: Job) -> None:
        data = job.public()
        for queue in self._subscribers.get(job.job_id, ()):
            if job.status.is_terminal:
                while queue.full():  # make room: the terminal event must get through
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(data)
