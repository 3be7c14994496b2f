"""Redis dies (SIGKILL) and comes back on its append-only file: nothing the service
acknowledged is lost, and the processes carry on without a restart of their own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from ai_engine.jobs.redis_store import RedisJobStore
from tests.jobs.conftest import make_job
from tests.jobs.fleet import Fleet, small_photo, wait_terminal
from tests.servers.redis import run_redis
from tests.servers.web import ImageServer, WebhookReceiver


async def submit_until_accepted(http: httpx.AsyncClient, body: dict[str, str]) -> str:
    """What a careful caller does: try again on 503 and on connection errors."""
    for _ in range(100):
        try:
            resp = await http.post("/generate-3d", json=body)
        except httpx.TransportError:
            await asyncio.sleep(0.2)
            continue
        if resp.status_code in (200, 202):
            return str(resp.json()["job_id"])
        assert resp.status_code == 503, resp.text
        await asyncio.sleep(0.2)
    raise TimeoutError(f"never accepted: {body}")


async def test_nothing_accepted_is_lost_when_redis_restarts(
        tmp_path: Path, webhook_secret: str, image_server: ImageServer,
        receiver: WebhookReceiver) -> None:
    # appendfsync always: every acknowledged write is on disk before Redis answers
    with run_redis(appendfsync="always") as server:
        fleet = Fleet(tmp_path, redis_url=server.url, webhook_secret=webhook_secret,
                      queue_lease_s=3)
        api, worker = fleet.add("serve"), fleet.add("worker")
        try:
            await fleet.start(api, worker)
            image_url = image_server.add("disc.png", small_photo())
            bodies = [{"session_id": "r", "asset_id": f"a{i}", "image_url": image_url,
                       "webhook_url": receiver.url} for i in range(16)]
            async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
                before = [await submit_until_accepted(http, b) for b in bodies[:8]]
                server.stop(kill=True)  # jobs queued and running, webhooks pending
                during = asyncio.gather(*(submit_until_accepted(http, b) for b in bodies[8:]))
                await asyncio.sleep(1.0)
                server.start()
                job_ids = before + list(await during)
                done = await wait_terminal(http, job_ids, timeout_s=120)
            assert {j["status"] for j in done.values()} == {"succeeded"}, fleet.logs()
            await receiver.wait_for(lambda r: {e.event["data"]["job_id"] for e in r.received
                                               } >= set(job_ids), timeout_s=60)
        finally:
            fleet.stop()


async def test_pubsub_comes_back_after_a_restart() -> None:
    with run_redis(appendfsync="always") as server:
        heard: list[str] = []
        worker = await RedisJobStore.open(server.url, prefix="pr", on_cancel=heard.append)
        api = await RedisJobStore.open(server.url, prefix="pr")
        try:
            job = make_job()
            await api.submit(job, max_queue=10)
            server.restart(kill=True)
            assert await worker.claim() is not None  # the queue survived
            deadline = time.monotonic() + 10
            while not heard and time.monotonic() < deadline:
                await api.request_cancel(job.job_id)  # once re-subscribed, it is heard
                await asyncio.sleep(0.2)
            assert heard and heard[0] == job.job_id
        finally:
            await worker.close()
            await api.close()
