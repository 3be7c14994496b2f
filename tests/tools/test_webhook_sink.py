"""The webhook sink: verifies with Standard Webhooks, keeps each event once, lists them."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook

from ai_engine.tools.webhook_sink import create_sink_app

SECRET = "whsec_" + base64.b64encode(b"sink-test-secret-0123456789abcd").decode()
ClientFactory = Callable[..., Awaitable[TestClient]]


def signed(event: dict[str, Any], *, webhook_id: str, secret: str = SECRET
           ) -> tuple[str, dict[str, str]]:
    body = json.dumps(event)
    now = datetime.now(tz=UTC)
    signature = Webhook(secret).sign(webhook_id, now, body)
    return body, {"webhook-id": webhook_id, "webhook-timestamp": str(int(now.timestamp())),
                  "webhook-signature": signature, "content-type": "application/json"}


def completed(job_id: str, *, status: str = "succeeded",
              error: dict[str, str] | None = None) -> dict[str, Any]:
    return {"type": "asset.completed" if status == "succeeded" else "asset.failed",
            "timestamp": "2026-01-01T00:00:00Z",
            "data": {"job_id": job_id, "status": status, "error": error}}


async def test_keeps_verified_events_once(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    store = tmp_path / "events.jsonl"
    client = await aiohttp_client(create_sink_app(SECRET, store_path=store))
    body, headers = signed(completed("job_1"), webhook_id="msg_1")
    for _ in range(2):  # a redelivery keeps its webhook-id
        resp = await client.post("/hook", data=body, headers=headers)
        assert resp.status == 204
    failed = completed("job_2", status="failed", error={"code": "fetch.http_status",
                                                         "message": "404"})
    body2, headers2 = signed(failed, webhook_id="msg_2")
    assert (await client.post("/hook", data=body2, headers=headers2)).status == 204

    listing = await (await client.get("/events")).json()
    assert listing["rejected"] == 0
    assert [(e["webhook_id"], e["type"], e["job_id"], e["error_code"])
            for e in listing["events"]] == [("msg_1", "asset.completed", "job_1", None),
                                            ("msg_2", "asset.failed", "job_2",
                                             "fetch.http_status")]
    # what is listed can be verified again by its reader, byte for byte
    first = listing["events"][0]
    Webhook(SECRET).verify(first["body"], {"webhook-id": first["webhook_id"],
                                           "webhook-timestamp": first["webhook_timestamp"],
                                           "webhook-signature": first["webhook_signature"]})
    after = await (await client.get("/events", params={"after": "1"})).json()
    assert [e["webhook_id"] for e in after["events"]] == ["msg_2"]
    assert [json.loads(line)["webhook_id"] for line in store.read_text().splitlines()] == \
        ["msg_1", "msg_2"]


async def test_rejects_bad_signatures(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(create_sink_app(SECRET))
    other = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    body, headers = signed(completed("job_1"), webhook_id="msg_1", secret=other)
    assert (await client.post("/hook", data=body, headers=headers)).status == 401
    _, good_headers = signed(completed("job_1"), webhook_id="msg_2")
    tampered = json.dumps(completed("job_1", status="failed"))
    assert (await client.post("/hook", data=tampered, headers=good_headers)).status == 401
    assert (await client.post("/hook", data="{}", headers={})).status == 401
    listing = await (await client.get("/events")).json()
    assert listing == {"events": [], "rejected": 3}
    assert (await client.get("/events", params={"after": "x"})).status == 400
    assert (await client.get("/healthz")).status == 200


def test_refuses_to_start_without_a_secret() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "ai_engine.tools.webhook_sink", "--port", "0"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "AI_ENGINE_WEBHOOK_SECRET" in result.stderr
