"""A burst of submissions to two API processes on one Redis: 429s with Retry-After past
the limits, no accepted job lost, and a second caller neither locked out nor starved."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from pathlib import Path

import httpx
import pytest

from ai_engine.jobs.redis_store import RedisJobStore
from tests.jobs.fleet import Fleet
from tests.servers.redis import RedisServer


@pytest.mark.parametrize(("burst", "max_queue"), [
    (1000, 300), pytest.param(10_000, 3000, marks=pytest.mark.slow)])
async def test_burst_is_bounded_and_fair(tmp_path: Path, redis_server: RedisServer,
                                         webhook_secret: str, burst: int,
                                         max_queue: int) -> None:
    fleet = Fleet(tmp_path, redis_url=redis_server.url, webhook_secret=webhook_secret,
                  max_queue=max_queue, session_queue_share=0.5)
    apis = [fleet.add("serve"), fleet.add("serve")]
    calm = max_queue // 4  # the second caller's modest load, sent during the burst
    try:
        await fleet.start(*apis)
        clients = [httpx.AsyncClient(base_url=a.url, timeout=60) for a in apis]
        plan = [("burst", i) for i in range(burst)]
        step = burst // calm
        for i in range(calm):  # spread through the burst
            plan.insert(i * (step + 1), ("calm", i))
        answers: dict[tuple[str, int], httpx.Response] = {}
        todo = iter(zip(plan, itertools.cycle(clients), strict=False))

        async def caller() -> None:
            for (session, i), client in todo:
                answers[(session, i)] = await client.post("/generate-3d", json={
                    "session_id": session, "asset_id": f"a{i}",
                    "image_url": "http://127.0.0.1:9/x.png"})

        await asyncio.gather(*(caller() for _ in range(32)))
        for client in clients:
            await client.aclose()
        statuses = Counter((s, r.status_code) for (s, _), r in answers.items())
        assert set(statuses) <= {("burst", 202), ("burst", 429), ("calm", 202)}, statuses
        # the burst got exactly its share of the queue; the calm caller all it asked for
        assert statuses[("burst", 202)] == max_queue // 2
        assert statuses[("burst", 429)] == burst - max_queue // 2
        assert statuses[("calm", 202)] == calm
        assert all(int(r.headers["Retry-After"]) >= 1 for r in answers.values()
                   if r.status_code == 429)
        accepted = [r.json()["job_id"] for r in answers.values() if r.status_code == 202]

        store = await RedisJobStore.open(redis_server.url, prefix=fleet.base[
            "AI_ENGINE_QUEUE_PREFIX"])
        try:
            # no loss: every accepted job is stored and queued
            assert await store.queued_count() == len(accepted)
            for job_id in accepted[:: max(1, len(accepted) // 200)]:
                job = await store.get(job_id)
                assert job is not None and job.status.value == "queued"
            # dispatch alternates between the callers, however long the burst's backlog
            order = []
            for _ in range(2 * calm):
                job = await store.claim()
                assert job is not None
                order.append(job.session_id)
            assert all(order[i] != order[i + 1] for i in range(len(order) - 1)), order
        finally:
            await store.close()
    finally:
        fleet.stop()
