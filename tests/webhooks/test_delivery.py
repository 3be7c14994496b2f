"""Webhook delivery against a real receiver that verifies Standard Webhooks signatures."""

from __future__ import annotations

import asyncio

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
