"""The JobStore contract: every test runs on the embedded SQLite store and on Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from ai_engine.jobs.model import JobStatus, Stage
from ai_engine.jobs.store import Conflict, Delivery, QueueFull
from ai_engine.webhooks.events import build_delivery
from tests.jobs.conftest import LEASE_S, Stores, make_job


async def test_submit_is_idempotent_per_session_and_asset(stores: Stores) -> None:
    store = await stores.open()
    job = make_job("s", "a")
    first, created = await store.submit(job, max_queue=10)
    assert created and first.job_id == job.job_id
    again, created = await store.submit(make_job("s", "a"), max_queue=10)
    assert not created and again.job_id == job.job_id and again.request == job.request
    with pytest.raises(Conflict) as info:
        await store.submit(make_job("s", "a", formats=["stl"]), max_queue=10)
    assert info.value.existing.job_id == job.job_id
    # the same asset id in another session is another job
    _, created = await store.submit(make_job("t", "a"), max_queue=10)
    assert created and await store.queued_count() == 2


async def test_queue_limit_refuses_with_a_retry_hint(stores: Stores) -> None:
    store = await stores.open()
    for session in ("s1", "s2"):
        await store.submit(make_job(session), max_queue=2)
    with pytest.raises(QueueFull) as info:
        await store.submit(make_job("s3"), max_queue=2)
    assert info.value.retry_after_s >= 1
    assert await store.queued_count() == 2
    assert await store.claim() is not None  # room again once a job leaves the queue
    _, created = await store.submit(make_job("s3"), max_queue=2)
    assert created


async def test_claim_takes_jobs_in_order_and_counts_attempts(stores: Stores) -> None:
    store = await stores.open()
    jobs = [make_job("s", f"a{i}") for i in range(3)]
    for job in jobs:
        await store.submit(job, max_queue=10)
    claimed = [await store.claim() for _ in jobs]
    assert [j.job_id for j in claimed if j] == [j.job_id for j in jobs]
    for taken, job in zip(claimed, jobs, strict=True):
        assert taken is not None and taken.status == JobStatus.RUNNING and taken.attempts == 1
        assert taken.started_at is not None and taken.request == job.request
        stored = await store.get(job.job_id)
        assert stored is not None and stored.status == JobStatus.RUNNING
    assert await store.claim() is None
    assert await store.queued_count() == 0
    assert await store.get("job_unknown") is None


async def test_save_keeps_stage_progress_and_timings(stores: Stores) -> None:
    store = await stores.open()
    await store.submit(make_job(), max_queue=10)
    job = await store.claim()
    assert job is not None
    job.stage, job.progress, job.timings = Stage.GENERATING, 42, {"fetching": 0.25}
    await store.save(job)
    stored = await store.get(job.job_id)
    assert stored is not None
    assert (stored.stage, stored.progress, stored.timings) == (Stage.GENERATING, 42,
                                                               {"fetching": 0.25})
    assert stored.public() == job.public()


async def test_finish_stores_the_end_and_its_webhooks_in_order(stores: Stores) -> None:
    store = await stores.open()
    await store.submit(make_job(), max_queue=10)
    job = await store.claim()
    assert job is not None
    started = build_delivery(job, "started")
    assert started is not None
    await store.add_deliveries([started])
    job.status, job.progress = JobStatus.SUCCEEDED, 100
    completed = build_delivery(job, "succeeded")
    assert completed is not None
    await store.finish(job, [completed])
    stored = await store.get(job.job_id)
    assert stored is not None and stored.status == JobStatus.SUCCEEDED
    # one event of a job at a time, oldest first
    due = await store.due_deliveries(now=time.time() + 1, limit=10)
    assert [d.webhook_id for d in due] == [started.webhook_id]
    due[0].status, due[0].attempts = "delivered", 1
    await store.update_delivery(due[0])
    due = await store.due_deliveries(now=time.time() + 1, limit=10)
    assert [(d.webhook_id, d.event_type) for d in due] == [(completed.webhook_id,
                                                            "asset.completed")]
    due[0].status = "delivered"
    await store.update_delivery(due[0])
    assert await store.due_deliveries(now=time.time() + 1, limit=10) == []
    assert await store.next_delivery_at() is None


async def test_a_failed_attempt_is_retried_later(stores: Stores) -> None:
    store = await stores.open()
    await store.submit(make_job(), max_queue=10)
    job = await store.claim()
    assert job is not None
    due = build_delivery(job, "started")
    assert due is not None
    await store.add_deliveries([due])
    [claimed] = await store.due_deliveries(now=time.time() + 1, limit=10)
    claimed.attempts, claimed.next_attempt_at = 1, time.time() + 0.3
    claimed.last_error = "receiver answered 500"
    await store.update_delivery(claimed)
    assert await store.due_deliveries(now=time.time(), limit=10) == []
    at = await store.next_delivery_at()
    assert at is not None and time.time() < at <= time.time() + 0.3
    [again] = await store.due_deliveries(now=time.time() + 0.35, limit=10)
    assert again.webhook_id == due.webhook_id and again.attempts == 1


async def test_requeue_waits_for_its_delay(stores: Stores) -> None:
    store = await stores.open()
    await store.submit(make_job(), max_queue=10)
    job = await store.claim()
    assert job is not None
    job.error = {"code": "fetch.timeout", "message": "slow"}
    await store.requeue(job, delay_s=0.3)
    assert await store.queued_count() == 1
    stored = await store.get(job.job_id)
    assert stored is not None and stored.status == JobStatus.QUEUED
    assert await store.claim() is None
    await asyncio.sleep(0.35)
    again = await store.claim()
    assert again is not None and again.job_id == job.job_id and again.attempts == 2


async def test_cancel_queued_and_request_cancel(stores: Stores) -> None:
    store = await stores.open()
    queued, running = make_job("s", "q"), make_job("s", "r")
    await store.submit(running, max_queue=10)
    await store.submit(queued, max_queue=10)
    claimed = await store.claim()
    assert claimed is not None and claimed.job_id == running.job_id
    assert await store.cancel_queued(running.job_id) is None  # running: not canceled here
    canceled = await store.cancel_queued(queued.job_id)
    assert canceled is not None and canceled.status == JobStatus.CANCELED
    assert canceled.error is not None and canceled.error["code"] == "job.canceled"
    stored = await store.get(queued.job_id)
    assert stored is not None and stored.status == JobStatus.CANCELED
    assert await store.queued_count() == 0 and await store.claim() is None
    flagged = await store.request_cancel(running.job_id)
    assert flagged is not None and flagged.job_id == running.job_id
    stored = await store.get(running.job_id)
    assert stored is not None and stored.cancel_requested
    assert await store.request_cancel("job_unknown") is None


async def test_410_stops_every_pending_delivery_to_that_url(stores: Stores) -> None:
    store = await stores.open()
    gone_url, other_url = "http://gone.test/h", "http://other.test/h"
    jobs = [make_job(webhook_url=url) for url in (gone_url, gone_url, other_url)]
    deliveries: list[Delivery] = []
    for job in jobs:
        await store.submit(job, max_queue=10)
        delivery = build_delivery(job, "started")
        assert delivery is not None
        deliveries.append(delivery)
    await store.add_deliveries(deliveries)
    assert await store.stop_deliveries_to(gone_url) == 2
    due = await store.due_deliveries(now=time.time() + 1, limit=10)
    assert [d.url for d in due] == [other_url]
    later = build_delivery(jobs[0], "started")
    assert later is not None
    await store.add_deliveries([later])
    assert later.status == "gone"
    due = await store.due_deliveries(now=time.time() + 1, limit=10)
    assert gone_url not in {d.url for d in due}


async def test_an_interrupted_job_runs_again_with_its_attempt_counted(stores: Stores) -> None:
    first = await stores.open()
    job = make_job()
    await first.submit(job, max_queue=10)
    assert await first.claim() is not None
    await stores.close(first)  # the process dies with the job running
    second = await stores.open()
    requeued, exhausted = await second.recover(max_attempts=3)
    if stores.kind == "sqlite":
        assert [j.job_id for j in requeued] == [job.job_id] and exhausted == []
    else:  # on the shared queue, the attempt's lease runs out instead
        await asyncio.sleep(LEASE_S + 0.1)
    again = await second.claim()
    assert again is not None and again.job_id == job.job_id and again.attempts == 2


async def test_sessions_take_turns_and_one_session_holds_at_most_its_share(
        stores: Stores) -> None:
    store = await stores.open(session_share=0.5)
    burst = [make_job("burst", f"b{i}") for i in range(5)]
    for job in burst:
        await store.submit(job, max_queue=10)
    with pytest.raises(QueueFull):  # half of the queue limit is the burst's share
        await store.submit(make_job("burst", "b5"), max_queue=10)
    calm = [make_job("calm", f"c{i}") for i in range(2)]
    for job in calm:
        await store.submit(job, max_queue=10)
    order = []
    while (job := await store.claim()) is not None:
        order.append(job.job_id)
    # the calm caller waits for one burst job per turn, not behind the whole burst
    expected = [burst[0], calm[0], burst[1], calm[1], burst[2], burst[3], burst[4]]
    assert order[:4] == [j.job_id for j in expected[:4]]
    assert sorted(order) == sorted(j.job_id for j in burst + calm)


async def test_a_cancel_never_overwrites_an_end_nor_is_lost(stores: Stores) -> None:
    store = await stores.open()
    first = make_job("race", "end")
    await store.submit(first, max_queue=10)
    running = await store.claim()
    assert running is not None
    running.status, running.finished_at = JobStatus.SUCCEEDED, running.started_at
    # a cancel arriving as the job ends: the end stays
    await asyncio.gather(store.request_cancel(first.job_id), store.finish(running, []))
    stored = await store.get(first.job_id)
    assert stored is not None and stored.status == JobStatus.SUCCEEDED

    second = make_job("race", "retry")
    await store.submit(second, max_queue=10)
    attempt = await store.claim()
    assert attempt is not None and not attempt.cancel_requested
    await store.request_cancel(second.job_id)
    # the executor's copy predates the cancel; writing it back must keep the cancel
    await store.save(attempt)
    await store.requeue(attempt, delay_s=0)
    stored = await store.get(second.job_id)
    assert stored is not None and stored.cancel_requested
