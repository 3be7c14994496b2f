"""Webhook events: which to send for a job, their bodies, and their signatures.

Bodies follow API.md: ``{"type", "timestamp", "data": <the job object>}``.
Signatures follow Standard Webhooks (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``), made with the `standardwebhooks` package; the
timestamp is the time of each attempt, the id and body never change.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

from standardwebhooks.webhooks import Webhook

from ai_engine.jobs.model import Job, JobStatus, iso, new_message_id, utcnow
from ai_engine.jobs.store import Delivery

EVENT_TYPES = {
    "started": "asset.started",
    "progress": "asset.progress",
    "succeeded": "asset.completed",
    "failed": "asset.failed",
    "canceled": "asset.failed",
}


def build_delivery(job: Job, event: str) -> Delivery | None:
    """The delivery for ``event`` (``started``, ``progress`` or the terminal status).

    Returns None when the job has no webhook URL or did not ask for the event
    (``completed`` in ``webhook_events`` covers success, failure and cancellation).
    """
    url = job.webhook_url
    if not url:
        return None
    wanted = job.webhook_events
    if event in ("started", "progress"):
        if event not in wanted:
            return None
    elif "completed" not in wanted:
        return None
    event_type = EVENT_TYPES[event]
    body = {"type": event_type, "timestamp": iso(utcnow()), "data": job.public()}
    now = time.time()
    return Delivery(webhook_id=new_message_id(), job_id=job.job_id, url=url,
                    event_type=event_type, payload=json.dumps(body, separators=(",", ":")),
                    created_at=now, next_attempt_at=now)


def terminal_event(job: Job) -> str:
    assert job.status.is_terminal
    return "succeeded" if job.status == JobStatus.SUCCEEDED else job.status.value


class Signer:
    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(secret)

    def headers(self, delivery: Delivery) -> dict[str, str]:
        now = datetime.now(UTC)
        return {
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._webhook.sign(delivery.webhook_id, now, delivery.payload),
            "user-agent": "ai-engine-webhooks/1",
        }


def load_or_create_secret(configured: str | None, data_dir: Path) -> str:
    """The configured secret, else the one stored in ``data_dir``, else a new stored one."""
    if configured:
        Webhook(configured)  # raises on a malformed secret, at start rather than at send
        return configured
    path = data_dir / "webhook_secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(secret + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return secret
