"""The webhook outbox on Redis (part of :class:`~ai_engine.jobs.redis_store.RedisJobStore`).

A job's pending deliveries form a list, so its events go out in order; the head of
each list sits in a sorted set by due time. Claiming a due delivery pushes it forward
by ``delivery_lease_s``: exactly one live process sends each attempt, and should that
process die, the delivery is due again for another once the lease has passed (with
the same ``webhook-id``). A 410 stops every pending delivery to the URL, and new
ones for ``GONE_FOR_S``, for every process.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from ai_engine.jobs.store import GONE_FOR_S, Delivery

log = logging.getLogger(__name__)


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def delivery_args(deliveries: list[Delivery]) -> list[Any]:
    """Deliveries as the scripts take them: 10 values each."""
    args: list[Any] = []
    for d in deliveries:
        args += [d.webhook_id, d.job_id, d.url, url_hash(d.url), d.event_type, d.payload,
                 d.created_at, d.next_attempt_at, d.attempts, d.status]
    return args


class RedisOutbox:
    """The outbox methods of the job store; the store provides the connection and scripts."""

    _r: Redis
    _lua: dict[str, AsyncScript]
    p: str
    retention_s: int
    delivery_lease_s: float

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        raise NotImplementedError

    # -- webhook outbox -----------------------------------------------------------
    @staticmethod
    def _set_ids(deliveries: list[Delivery], out: list[str]) -> None:
        for d, (id_, status) in zip(deliveries, zip(out[::2], out[1::2], strict=True),
                                    strict=True):
            d.id, d.status = int(id_), status
            if status == "gone":
                d.last_error = "receiver answered 410 earlier"

    async def add_deliveries(self, deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        args = [self.p, self.retention_s, *delivery_args(deliveries)]
        self._set_ids(deliveries, await self._run("ADD", [], args))

    async def due_deliveries(self, *, now: float, limit: int) -> list[Delivery]:
        """Claim due deliveries (the oldest pending one of each job) for this process.

        While Redis is unreachable nothing is due (the deliverer keeps polling)."""
        try:
            out = await self._lua["DUE"](keys=[f"{self.p}dlv:due"], args=[
                self.p, now, now + self.delivery_lease_s, min(limit, 32)])
        except (RedisError, OSError) as exc:
            log.warning("webhook outbox unavailable: %s", exc)
            return []
        due = []
        for id_, flat in zip(out[::2], out[1::2], strict=True):
            h = dict(zip(flat[::2], flat[1::2], strict=True))
            if h.get("status") != "pending":
                continue
            due.append(Delivery(
                id=int(id_), webhook_id=h["webhook_id"], job_id=h["job_id"], url=h["url"],
                event_type=h["event_type"], payload=h["payload"],
                created_at=float(h["created_at"]), next_attempt_at=float(h["next_attempt_at"]),
                attempts=int(h["attempts"]), status=h["status"],
                last_error=h["last_error"] or None))
        return due

    async def next_delivery_at(self) -> float | None:
        try:
            head = await self._r.zrange(f"{self.p}dlv:due", 0, 0, withscores=True)
        except (RedisError, OSError):
            return None
        return float(head[0][1]) if head else None

    async def update_delivery(self, delivery: Delivery) -> None:
        d = delivery
        await self._run("UPDATE_DELIVERY", [], [
            self.p, d.id, d.attempts, d.next_attempt_at, d.status, d.last_error or "",
            self.retention_s])

    async def stop_deliveries_to(self, url: str) -> int:
        """The receiver answered 410: stop every pending delivery to ``url``, and new
        ones for ``GONE_FOR_S``."""
        return int(await self._run("STOP_URL", [], [
            self.p, url_hash(url), int(GONE_FOR_S), time.time(), self.retention_s]))
