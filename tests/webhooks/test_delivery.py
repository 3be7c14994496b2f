"""Webhook delivery against a real receiver that verifies Standard Webhooks signatures."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from ai_engine.webhooks.delivery import retry_after_s
from tests.conftest import free_port
from tests.servers.web import WebhookReceiver


async def submit(client, image_server, photo, receiver_url, asset_id, **extra):
    resp = await client.post("/generate-3d", json={
        "session_id": "wh", "asset_id": asset_id, "image_url": image_server.add("c.png", photo),
        "webhook_url": receiver_url, **extra})
    assert resp.status == 202, await resp.text()
    return (await resp.json())["job_id"]


async def test_500_then_200_retries_with_the_same_webhook_id(start_service, make_settings,
                                                             image_server, receiver, photo):
    receiver.responses = [500, 503, 200]
    client = await start_service(make_settings())
    job_id = await submit(client, image_server, photo, receiver.url, "retry")
    event = await receiver.wait_terminal(job_id)
    assert event["type"] == "asset.completed"
    ids = [wid for wid, _ in receiver.attempts]
    assert [s for _, s in receiver.attempts] == [500, 503, 200]
    assert len(set(ids)) == 1  # one event, same webhook-id on every attempt
    assert len(receiver.received) == 1 and receiver.rejected == 0


async def test_410_stops_delivery_to_that_url(start_service, make_settings, image_server,
                                              receiver, photo):
    receiver.responses = [410]
    client = await start_service(make_settings())
    job_id = await submit(client, image_server, photo, receiver.url, "gone",
                          webhook_events=["started", "progress", "completed"])
    for _ in range(200):
        job = await (await client.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] == "succeeded":
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # time for any (wrong) retry or later event to arrive
    # the first event got 410: it is not retried, and no later event goes to that URL
    assert receiver.attempts == [(receiver.attempts[0][0], 410)], receiver.attempts


async def test_receiver_down_for_a_while_then_up(start_service, make_settings, image_server,
                                                 webhook_secret, photo):
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    client = await start_service(make_settings())
    job_id = await submit(client, image_server, photo, url, "down")
    await asyncio.sleep(1.5)  # several attempts meet a closed port
    receiver = WebhookReceiver(secret=webhook_secret)
    app = web.Application()
    app.router.add_post("/hook", receiver._handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        event = await receiver.wait_terminal(job_id, timeout_s=20)
        assert event["type"] == "asset.completed"
    finally:
        await runner.cleanup()


async def test_bad_secret_is_rejected_by_the_receiver(start_service, make_settings,
                                                      image_server, photo):
    other = await WebhookReceiver(secret="whsec_" + "A" * 32).start()
    try:
        client = await start_service(make_settings(webhook_backoff_base_s=10))
        await submit(client, image_server, photo, other.url, "badsig")
        await other.wait_for(lambda r: r.rejected >= 1)
        assert other.received == []
    finally:
        await other.close()


def test_retry_after_parsing():
    assert retry_after_s({"Retry-After": "7"}) == 7.0
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_s({}) is None
    assert retry_after_s({"Retry-After": "soon"}) is None


async def test_deliveries_survive_a_store_error(tmp_path, receiver, webhook_secret):
    """One failed read of the outbox must not stop deliveries for good."""
    import time

    from ai_engine.fetch import SafeFetcher
    from ai_engine.jobs.store import Delivery, SqliteJobStore
    from ai_engine.webhooks.delivery import WebhookDeliverer
    from ai_engine.webhooks.events import Signer

    store = await SqliteJobStore.open(tmp_path / "jobs.sqlite3")
    real_due = store.due_deliveries
    failures = [RuntimeError("database is locked")]

    async def flaky_due(*, now: float, limit: int) -> list[Delivery]:
        if failures:
            raise failures.pop()
        return await real_due(now=now, limit=limit)

    store.due_deliveries = flaky_due  # type: ignore[method-assign]
    fetcher = SafeFetcher(allow_private=True, timeout_s=5, max_bytes=10**6)
    deliverer = WebhookDeliverer(store, fetcher, Signer(webhook_secret), max_age_s=60,
                                 backoff_base_s=0.05, backoff_max_s=0.2)
    task = asyncio.create_task(deliverer.run())
    try:
        now = time.time()
        body = '{"type": "asset.completed", "timestamp": "t", "data": {"job_id": "job_x"}}'
        await store.add_deliveries([Delivery(webhook_id="msg_x", job_id="job_x",
                                             url=receiver.url, event_type="asset.completed",
                                             payload=body, created_at=now,
                                             next_attempt_at=now)])
        deliverer.wake()
        await receiver.wait_for(lambda r: len(r.received) == 1, timeout_s=10)
        assert not failures and receiver.received[0].webhook_id == "msg_x"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await fetcher.aclose()
        await store.close()
