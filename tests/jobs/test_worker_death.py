"""Kill -9 a worker in the middle of a job: after its lease runs out another worker
takes the job over and finishes it, with the attempt counted; the webhook arrives once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.jobs.fleet import Fleet, small_photo
from tests.servers.redis import RedisServer
from tests.servers.web import ImageServer, WebhookReceiver

LEASE_S = 2.0


async def wait_for(http: httpx.AsyncClient, job_id: str, predicate: object, *,
                   timeout_s: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = (await http.get(f"/v1/jobs/{job_id}")).json()
        if predicate(job):  # type: ignore[operator]
            return dict(job)
        await asyncio.sleep(0.05)
    raise TimeoutError(f"job {job_id}: {job}")


async def test_a_killed_workers_job_is_finished_by_another(
        tmp_path: Path, redis_server: RedisServer, webhook_secret: str,
        image_server: ImageServer, receiver: WebhookReceiver) -> None:
    fleet = Fleet(tmp_path, redis_url=redis_server.url, webhook_secret=webhook_secret,
                  queue_lease_s=LEASE_S)
    api, doomed, survivor = fleet.add("serve"), fleet.add("worker"), fleet.add("worker")
    try:
        await fleet.start(api, doomed)
        image_server.delays_s["slow.png"] = 8.0  # the job sits in its fetch stage
        body = {"session_id": "k", "asset_id": "a", "webhook_url": receiver.url,
                "image_url": image_server.add("slow.png", small_photo())}
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            job_id = (await http.post("/generate-3d", json=body)).json()["job_id"]
            await wait_for(http, job_id, lambda j: j["stage"] == "fetching")
            await fleet.start(survivor)
            doomed.kill()
            killed_at = time.monotonic()
            image_server.delays_s.clear()
            await wait_for(http, job_id, lambda j: j["attempts"] == 2, timeout_s=LEASE_S + 10)
            claim_latency_s = time.monotonic() - killed_at
            event = await receiver.wait_terminal(job_id, timeout_s=30)
            job = (await http.get(f"/v1/jobs/{job_id}")).json()
        assert event["type"] == "asset.completed" and event["data"]["attempts"] == 2
        assert job["status"] == "succeeded", fleet.logs()
        assert len({r.webhook_id for r in receiver.received}) == 1
        # taken over once the lease ran out (renewed every third of it), and soon after
        assert LEASE_S * 2 / 3 - 0.2 <= claim_latency_s <= LEASE_S + 3, claim_latency_s
        assert await survivor.finished_jobs() == 1
    finally:
        fleet.stop()
