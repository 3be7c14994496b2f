"""Two API processes and two worker processes on one Redis: every job ends exactly once
per idempotency key, every webhook arrives, SSE works from an API process that runs
no job, and both workers take work."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.jobs.fleet import Fleet, small_photo, wait_terminal
from tests.servers.redis import RedisServer
from tests.servers.web import ImageServer, WebhookReceiver


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer, webhook_secret: str) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, redis_url=redis_server.url, webhook_secret=webhook_secret)
    yield fleet
    fleet.stop()


async def sse_until_terminal(url: str) -> list[dict[str, object]]:
    events = []
    async with httpx.AsyncClient(timeout=120) as http, http.stream("GET", url) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["status"] in ("succeeded", "failed", "canceled"):
                    break
    return events


@pytest.mark.parametrize("jobs", [40, pytest.param(200, marks=pytest.mark.slow)])
async def test_two_apis_two_workers(fleet: Fleet, image_server: ImageServer,
                                    receiver: WebhookReceiver, jobs: int) -> None:
    apis = [fleet.add("serve"), fleet.add("serve")]
    workers = [fleet.add("worker"), fleet.add("worker")]
    await fleet.start(*apis, *workers)
    image_url = image_server.add("disc.png", small_photo())
    bodies = [{"session_id": f"s{i % 3}", "asset_id": f"a{i}", "image_url": image_url,
               "webhook_url": receiver.url} for i in range(jobs)]
    clients = [httpx.AsyncClient(base_url=api.url, timeout=60) for api in apis]
    gate = asyncio.Semaphore(16)

    async def submit(client: httpx.AsyncClient, body: dict[str, str]) -> tuple[int, str]:
        async with gate:
            resp = await client.post("/generate-3d", json=body)
        assert resp.status_code in (200, 202), resp.text
        return resp.status_code, resp.json()["job_id"]

    try:
        # every key goes to both APIs at once: one job per key
        answers = await asyncio.gather(*(submit(c, b) for b in bodies for c in clients))
        per_key = [answers[2 * i: 2 * i + 2] for i in range(jobs)]
        assert all(a[1] == b[1] for a, b in per_key), "two jobs for one key"
        assert all(sorted((a[0], b[0])) == [200, 202] for a, b in per_key)
        job_ids = [a[1] for a, _ in per_key]
        watched = asyncio.create_task(sse_until_terminal(
            f"{apis[1].url}/v1/jobs/{job_ids[-1]}/events"))
        done = await wait_terminal(clients[0], job_ids, timeout_s=60 + 2 * jobs)
        assert {j["status"] for j in done.values()} == {"succeeded"}, fleet.logs()
        assert all(j["attempts"] == 1 for j in done.values())
        # the other API sees the same jobs
        job = (await clients[1].get(f"/v1/jobs/{job_ids[0]}")).json()
        assert job == done[job_ids[0]]

        def all_webhooks(r: WebhookReceiver) -> bool:
            return {e.event["data"]["job_id"] for e in r.received} >= set(job_ids)

        await receiver.wait_for(all_webhooks, timeout_s=60)
        terminal = Counter(r.event["data"]["job_id"] for r in receiver.received
                           if r.event["type"] == "asset.completed")
        ids_per_job = {j: {r.webhook_id for r in receiver.received
                           if r.event["data"]["job_id"] == j} for j in job_ids}
        assert set(terminal) == set(job_ids) and receiver.rejected == 0
        assert all(len(ids) == 1 for ids in ids_per_job.values())  # one event per job

        events = await asyncio.wait_for(watched, timeout=30)
        assert events[-1]["status"] == "succeeded"
        # the asset is served by the API whose address is the public URL
        asset = done[job_ids[0]]["assets"][0]
        assert (await clients[0].get(asset["url"])).status_code == 200
        # both workers took jobs; the API processes ran none
        counts = [await w.finished_jobs() for w in workers]
        assert all(c > 0 for c in counts) and sum(counts) == jobs, counts
        assert [await a.finished_jobs() for a in apis] == [0, 0]
    finally:
        for client in clients:
            await client.aclose()


async def test_cancel_from_an_api_process_stops_the_job_on_a_worker(
        fleet: Fleet, image_server: ImageServer, receiver: WebhookReceiver) -> None:
    api, worker = fleet.add("serve"), fleet.add("worker")
    await fleet.start(api, worker)
    image_server.delays_s["slow.png"] = 2.0
    body = {"session_id": "c", "asset_id": "a", "webhook_url": receiver.url,
            "image_url": image_server.add("slow.png", small_photo())}
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        job_id = (await http.post("/generate-3d", json=body)).json()["job_id"]
        for _ in range(200):
            if (await http.get(f"/v1/jobs/{job_id}")).json()["status"] == "running":
                break
            await asyncio.sleep(0.05)
        assert (await http.post(f"/v1/jobs/{job_id}/cancel")).status_code == 202
        [job] = (await wait_terminal(http, [job_id], timeout_s=20)).values()
    assert job["status"] == "canceled" and job["error"]["code"] == "job.canceled"
    event = await receiver.wait_terminal(job_id)
    assert event["type"] == "asset.failed" and event["data"]["status"] == "canceled"
