"""What only the shared store does: several processes (here: several store instances,
each with its own connections and consumer name) on one real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from ai_engine.jobs.model import JobStatus
from ai_engine.jobs.redis_store import RedisJobStore
from ai_engine.jobs.shared_events import SharedJobEvents
from ai_engine.jobs.store import QueueFull, StoreUnavailable
from ai_engine.webhooks.events import build_delivery
from tests.jobs.conftest import LEASE_S, Stores, make_job
from tests.servers.redis import run_redis


async def open_redis(stores: Stores, **options: object) -> RedisJobStore:
    store = await stores.open(**options)
    assert isinstance(store, RedisJobStore)
    return store


async def test_idempotency_holds_across_processes(redis_stores: Stores) -> None:
    a, b = await open_redis(redis_stores), await open_redis(redis_stores)
    submissions = [(store, make_job("s", f"k{i % 10}")) for i in range(60)
                   for store in (a, b)]
    results = await asyncio.gather(*(s.submit(j, max_queue=100) for s, j in submissions))
    created = [job.job_id for job, new in results if new]
    assert len(created) == 10
    by_key: dict[str, set[str]] = {}
    for job, _ in results:
        by_key.setdefault(job.asset_id, set()).add(job.job_id)
    assert all(len(ids) == 1 for ids in by_key.values())
    assert await a.queued_count() == 10


async def test_a_stalled_worker_loses_its_job_and_cannot_write_over_the_new_owner(
        redis_stores: Stores) -> None:
    stopped: list[str] = []
    a = await open_redis(redis_stores, on_cancel=stopped.append)
    b = await open_redis(redis_stores)
    await a.submit(make_job(), max_queue=10)
    job = await a.claim()
    assert job is not None
    assert a._heartbeat is not None
    a._heartbeat.cancel()  # the worker hangs: its lease is no longer renewed
    await asyncio.sleep(LEASE_S + 0.1)
    taken = await b.claim()
    assert taken is not None and taken.job_id == job.job_id and taken.attempts == 2
    # the stalled worker wakes up and tries to write: every write is refused
    job.progress = 50
    await a.save(job)
    assert stopped == [job.job_id]  # told to stop its copy of the job
    job.status = JobStatus.SUCCEEDED
    done = build_delivery(job, "succeeded")
    assert done is not None
    await a.finish(job, [done])
    stored = await b.get(job.job_id)
    assert stored is not None and stored.status == JobStatus.RUNNING and stored.progress == 0
    taken.status = JobStatus.SUCCEEDED
    await b.finish(taken, [d for d in [build_delivery(taken, "succeeded")] if d])
    stored = await b.get(job.job_id)
    assert stored is not None and stored.status == JobStatus.SUCCEEDED and stored.attempts == 2
    due = await b.due_deliveries(now=time.time() + 1, limit=10)
    assert [d.event_type for d in due] == ["asset.completed"]  # one terminal webhook


async def test_a_live_worker_keeps_its_lease(redis_stores: Stores) -> None:
    a, b = await open_redis(redis_stores), await open_redis(redis_stores)
    await a.submit(make_job(), max_queue=10)
    assert await a.claim() is not None
    await asyncio.sleep(3 * LEASE_S)  # longer than the lease: renewed meanwhile
    assert await b.claim() is None


async def test_too_many_interrupted_attempts_fail_the_job_with_its_webhook(
        redis_stores: Stores) -> None:
    a = await open_redis(redis_stores, max_attempts=2)
    job = make_job()
    await a.submit(job, max_queue=10)
    for _ in range(2):  # two workers die in turn with the job
        assert await a.claim() is not None
        await redis_stores.close(a)
        await asyncio.sleep(LEASE_S + 0.1)
        a = await open_redis(redis_stores, max_attempts=2)
    assert await a.claim() is None
    stored = await a.get(job.job_id)
    assert stored is not None and stored.status == JobStatus.FAILED
    assert stored.error == {"code": "job.too_many_attempts",
                            "message": "the job was interrupted 2 times"}
    [failed] = await a.due_deliveries(now=time.time() + 1, limit=10)
    assert failed.event_type == "asset.failed" and failed.job_id == job.job_id


async def test_sessions_take_turns(redis_stores: Stores) -> None:
    store = await open_redis(redis_stores)
    for i in range(20):
        await store.submit(make_job("big", f"b{i}"), max_queue=100)
    for i in range(3):
        await store.submit(make_job("small", f"s{i}"), max_queue=100)
    await store.submit(make_job("tiny", "t0"), max_queue=100)
    order = []
    for _ in range(10):
        job = await store.claim()
        assert job is not None
        order.append(job.asset_id)
    assert order == ["b0", "s0", "t0", "b1", "s1", "b2", "s2", "b3", "b4", "b5"]


async def test_a_retry_goes_to_the_front_of_its_session(redis_stores: Stores) -> None:
    store = await open_redis(redis_stores)
    for i in range(3):
        await store.submit(make_job("s", f"a{i}"), max_queue=100)
    first = await store.claim()
    assert first is not None and first.asset_id == "a0"
    await store.requeue(first, delay_s=0)
    again = await store.claim()
    assert again is not None and again.asset_id == "a0" and again.attempts == 2


async def test_one_session_may_fill_only_its_share_of_the_queue(redis_stores: Stores) -> None:
    store = await open_redis(redis_stores, session_share=0.5)
    for i in range(5):
        await store.submit(make_job("burst", f"a{i}"), max_queue=10)
    with pytest.raises(QueueFull):
        await store.submit(make_job("burst", "a5"), max_queue=10)
    for i in range(5):  # another caller still gets in
        await store.submit(make_job("other", f"b{i}"), max_queue=10)
    with pytest.raises(QueueFull):
        await store.submit(make_job("third"), max_queue=10)
    assert await store.queued_count() == 10


async def test_changes_reach_watchers_in_other_processes(redis_stores: Stores) -> None:
    events = SharedJobEvents()
    worker = await open_redis(redis_stores)
    api = await open_redis(redis_stores, events=events)
    job = make_job()
    await api.submit(job, max_queue=10)
    queue = events.subscribe(job.job_id)
    await asyncio.sleep(0.1)  # the subscription reaches Redis
    claimed = await worker.claim()
    assert claimed is not None
    claimed.progress = 40
    await worker.save(claimed)
    claimed.status = JobStatus.SUCCEEDED
    await worker.finish(claimed, [])
    seen: list[dict[str, object]] = []
    while not seen or seen[-1]["status"] != "succeeded":
        seen.append(await asyncio.wait_for(queue.get(), timeout=5))
    assert [e["progress"] for e in seen if e["status"] == "running"][-1] == 40
    events.unsubscribe(job.job_id, queue)
    # a process does not hear back its own changes (its views publish them in-process)
    mine = make_job()
    await api.submit(mine, max_queue=10)
    queue = events.subscribe(mine.job_id)
    await asyncio.sleep(0.1)
    assert await api.cancel_queued(mine.job_id) is not None
    await asyncio.sleep(0.2)
    assert queue.empty()


async def test_cancel_and_wake_reach_every_process(redis_stores: Stores) -> None:
    canceled: list[str] = []
    woken: list[int] = []
    worker = await open_redis(redis_stores, on_cancel=canceled.append,
                              on_wake=lambda: woken.append(1))
    api = await open_redis(redis_stores)
    job = make_job()
    await api.submit(job, max_queue=10)
    for _ in range(100):
        if woken:
            break
        await asyncio.sleep(0.02)
    assert woken
    assert await worker.claim() is not None
    await api.request_cancel(job.job_id)
    for _ in range(100):
        if canceled:
            break
        await asyncio.sleep(0.02)
    assert canceled == [job.job_id]


async def test_each_webhook_attempt_is_claimed_by_one_process(redis_stores: Stores) -> None:
    stores = [await open_redis(redis_stores) for _ in range(3)]
    deliveries = []
    for i in range(30):
        job = make_job("s", f"a{i}")
        await stores[0].submit(job, max_queue=100)
        delivery = build_delivery(job, "started")
        assert delivery is not None
        deliveries.append(delivery)
    await stores[0].add_deliveries(deliveries)
    rounds = await asyncio.gather(*(s.due_deliveries(now=time.time() + 1, limit=16)
                                    for s in stores for _ in range(3)))
    claimed = [d.webhook_id for batch in rounds for d in batch]
    assert sorted(claimed) == sorted(d.webhook_id for d in deliveries)


async def test_an_unreachable_redis_is_reported_as_unavailable() -> None:
    with run_redis() as server:
        store = await RedisJobStore.open(server.url, prefix="down", retries=1)
        try:
            server.stop()
            with pytest.raises(StoreUnavailable):
                await store.submit(make_job(), max_queue=10)
            assert await store.due_deliveries(now=time.time(), limit=10) == []
        finally:
            await store.close()


async def test_a_job_whose_task_ended_unfinished_is_taken_over(redis_stores: Stores) -> None:
    a, b = await open_redis(redis_stores), await open_redis(redis_stores)
    await a.submit(make_job("s", "lost"), max_queue=10)
    await a.submit(make_job("s", "drained"), max_queue=10)
    lost, drained = await a.claim(), await a.claim()
    assert lost is not None and drained is not None
    a.release(lost.job_id)  # its task died without a final write: no more renewals
    a.release(drained.job_id)  # the drain's task ended; the drain then requeues it
    drained.attempts -= 1
    await a.requeue(drained, delay_s=0)
    await asyncio.sleep(LEASE_S + 0.1)
    taken = [await b.claim(), await b.claim()]
    assert {(j.asset_id, j.attempts) for j in taken if j} == {("lost", 2), ("drained", 1)}
