"""Durable webhook delivery from the store's outbox.

Each pending delivery is POSTed through the safe fetcher (same SSRF policy as
image downloads). 2xx: delivered. 410: the receiver is gone; every pending
delivery to that URL stops. Anything else (other statuses, timeouts,
connection errors) is retried with exponential backoff and full jitter,
honouring ``Retry-After``, until ``max_age_s`` after the event was created.
Deliveries live in the store, so a restart resumes them with the same
``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ai_engine.errors import FetchError
from ai_engine.jobs.store import Delivery, JobStore
from ai_engine.webhooks.events import Signer

log = logging.getLogger(__name__)


class Poster(Protocol):
    async def post_json(self, url: str, body: bytes, headers: Mapping[str, str], *,
                        timeout_s: float | None = None) -> tuple[int, Mapping[str, str]]: ...


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), if any."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


class WebhookDeliverer:
    def __init__(self, store: JobStore, poster: Poster, signer: Signer, *,
                 max_age_s: float, backoff_base_s: float, backoff_max_s: float,
                 timeout_s: float = 10.0,
                 concurrency: int = 16, metrics: Any = None) -> None:
        self._store = store
        self._poster = poster
        self._signer = signer
        self._max_age_s = max_age_s
        self._timeout_s = timeout_s
        self._base_s = backoff_base_s
        self._max_s = backoff_max_s
        self._sem = asyncio.Semaphore(concurrency)
        self._in_flight: dict[int, tuple[str, asyncio.Task[None]]] = {}
        self._wake = asyncio.Event()
        self._metrics = metrics
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled; sleeps until the next delivery is due or woken."""
        while not self._stopping:
            self._wake.clear()
            try:
                await self.dispatch_due()
                next_at = await self._store.next_delivery_at()
            except Exception:  # a store hiccup must not end deliveries for good
                log.exception("webhook dispatch failed; retrying in 1 s")
                next_at = time.time() + 1.0
            sleep_s = 1.0 if next_at is None else min(1.0, max(0.01, next_at - time.time()))
            if sleep_s < 0.25 and self._in_flight:
                # what is due is (mostly) in flight: wait for a delivery to finish (it wakes
                # this loop) rather than polling the store
                sleep_s = 0.25
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=sleep_s)

    async def dispatch_due(self) -> None:
        due = await self._store.due_deliveries(now=time.time(), limit=256)
        busy_jobs = {job_id for job_id, _ in self._in_flight.values()}
        for delivery in due:
            if delivery.id is None or delivery.id in self._in_flight \
                    or delivery.job_id in busy_jobs:
                continue  # one delivery per job at a time keeps its events in order
            busy_jobs.add(delivery.job_id)
            task = asyncio.create_task(self._deliver(delivery))
            self._in_flight[delivery.id] = (delivery.job_id, task)
            task.add_done_callback(self._forget(delivery.id))

    def _forget(self, delivery_id: int) -> Callable[[asyncio.Task[None]], None]:
        def done(_: asyncio.Task[None]) -> None:
            self._in_flight.pop(delivery_id, None)
        return done

    async def flush(self, *, timeout_s: float) -> None:
        """Try every due delivery once more and wait for those in flight (at drain)."""
        self._stopping = True
        with contextlib.suppress(Exception):
            await self.dispatch_due()
        tasks = [task for _, task in self._in_flight.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    async def _deliver(self, delivery: Delivery) -> None:
        async with self._sem:
            try:
                outcome = await self._attempt(delivery)
            except Exception:
                log.exception("webhook %s: attempt failed unexpectedly", delivery.webhook_id)
                outcome = "error"
        if self._metrics is not None:
            self._metrics.webhook_deliveries.labels(outcome=outcome).inc()
        self._wake.set()  # the job's next event may now go

    async def _attempt(self, d: Delivery) -> str:
        d.attempts += 1
        status: int | None = None
        headers: Mapping[str, str] = {}
        try:
            status, headers = await self._poster.post_json(
                d.url, d.payload.encode(), self._signer.headers(d), timeout_s=self._timeout_s)
            error = None if 200 <= status < 300 else f"receiver answered {status}"
        except FetchError as exc:
            error = f"{exc.code}: {exc.message}"
            if not exc.retryable and exc.code == "fetch.url_not_allowed":
                d.status, d.last_error = "blocked", error
                await self._store.update_delivery(d)
                log.warning("webhook %s to %s refused by policy: %s", d.webhook_id, d.url, error)
                return "blocked"
        except Exception as exc:  # anything else: a failed attempt, retried with backoff
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            d.status, d.last_error = "delivered", None
            await self._store.update_delivery(d)
            log.info("webhook %s %s delivered (attempt %d)", d.webhook_id, d.event_type,
                     d.attempts)
            return "delivered"
        d.last_error = error
        if status == 410:
            d.status = "gone"
            await self._store.update_delivery(d)
            stopped = await self._store.stop_deliveries_to(d.url)
            log.warning("webhook receiver %s answered 410: stopped %d pending deliveries",
                        d.url, stopped + 1)
            return "gone"
        delay_s = min(self._max_s, self._base_s * 2 ** (d.attempts - 1)) * random.uniform(0.5, 1)
        hinted = retry_after_s(headers)
        if hinted is not None:
            delay_s = max(delay_s, min(hinted, self._max_s))
        if time.time() + delay_s - d.created_at > self._max_age_s:
            d.status = "expired"
            await self._store.update_delivery(d)
            log.error("webhook %s to %s expired after %d attempts: %s", d.webhook_id, d.url,
                      d.attempts, error)
            return "expired"
        d.next_attempt_at = time.time() + delay_s
        await self._store.update_delivery(d)
        log.info("webhook %s attempt %d failed (%s); retry in %.1fs", d.webhook_id,
                 d.attempts, error, delay_s)
        self._wake.set()
        return "retry"
