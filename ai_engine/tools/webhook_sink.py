"""A webhook receiver for local stacks: verifies, logs and keeps every event.

Run it beside the service (the docker-compose stack does, under the ``dev``
profile) and give jobs ``webhook_url=http://<sink>:9000/hook``::

    AI_ENGINE_WEBHOOK_SECRET=whsec_... python -m ai_engine.tools.webhook_sink --port 9000

Each POST is verified with the ``standardwebhooks`` library against the
service's secret: a good one is answered ``204`` and kept, a bad one ``401`` and
counted. ``GET /events`` returns what was kept, oldest first, with the raw body
and the signature headers so that a caller can verify each one again itself::

    {"events": [{"webhook_id", "webhook_timestamp", "webhook_signature", "body",
                 "received_at", "type", "job_id", "status", "error_code"}, ...],
     "rejected": 0}

``?after=N`` skips the first N events (poll with the count seen so far). A
redelivery (same ``webhook-id``) is answered ``204`` again but kept once.
With ``--store FILE`` every kept event is also appended to FILE as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

log = logging.getLogger("ai_engine.webhook_sink")
SECRET_ENV = "AI_ENGINE_WEBHOOK_SECRET"


@dataclass(frozen=True)
class SinkEvent:
    """One verified delivery as received (raw body and signature headers kept)."""

    webhook_id: str
    webhook_timestamp: str
    webhook_signature: str
    body: str
    received_at: float  # seconds since the epoch, on the sink's clock
    type: str
    job_id: str | None
    status: str | None
    error_code: str | None


class WebhookSink:
    """The sink's state: kept events, rejected count, the optional JSON-lines file."""

    def __init__(self, secret: str, *, store_path: Path | None = None) -> None:
        self._webhook = Webhook(secret)
        self.store_path = store_path
        self.events: list[SinkEvent] = []
        self.rejected = 0
        self._seen: set[str] = set()

    def receive(self, body: str, headers: dict[str, str]) -> SinkEvent | None:
        """Verify one delivery; keep it (once per ``webhook-id``) and return it, or None if bad."""
        try:
            payload = self._webhook.verify(body, headers)
        except (WebhookVerificationError, ValueError) as exc:
            self.rejected += 1
            log.warning("rejected a delivery: %s", exc)
            return None
        lowered = {k.lower(): v for k, v in headers.items()}
        data = payload.get("data") if isinstance(payload, dict) else None
        data = data if isinstance(data, dict) else {}
        error = data.get("error") if isinstance(data.get("error"), dict) else None
        event = SinkEvent(
            webhook_id=lowered["webhook-id"], webhook_timestamp=lowered["webhook-timestamp"],
            webhook_signature=lowered["webhook-signature"], body=body, received_at=time.time(),
            type=str(payload.get("type", "")) if isinstance(payload, dict) else "",
            job_id=data.get("job_id"), status=data.get("status"),
            error_code=error.get("code") if error else None)
        if event.webhook_id in self._seen:
            log.info("redelivery of %s (%s), already kept", event.webhook_id, event.type)
            return event
        self._seen.add(event.webhook_id)
        self.events.append(event)
        log.info("%s job=%s status=%s%s", event.type, event.job_id, event.status,
                 f" error={event.error_code}" if event.error_code else "")
        if self.store_path is not None:
            with self.store_path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(asdict(event)) + "\n")
        return event

    def listing(self, *, after: int = 0) -> dict[str, Any]:
        return {"events": [asdict(e) for e in self.events[max(0, after):]],
                "rejected": self.rejected}


SINK: web.AppKey[WebhookSink] = web.AppKey("sink", WebhookSink)


async def _hook(request: web.Request) -> web.Response:
    body = (await request.read()).decode("utf-8", errors="replace")
    event = request.app[SINK].receive(body, dict(request.headers))
    return web.Response(status=204 if event is not None else 401)


async def _events(request: web.Request) -> web.Response:
    try:
        after = int(request.query.get("after", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="after must be an integer") from None
    return web.json_response(request.app[SINK].listing(after=after))


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_sink_app(secret: str, *, store_path: Path | None = None) -> web.Application:
    """The sink as an aiohttp application (``POST /hook``, ``GET /events``, ``GET /healthz``)."""
    app = web.Application()
    app[SINK] = WebhookSink(secret, store_path=store_path)
    app.router.add_post("/hook", _hook)
    app.router.add_get("/events", _events)
    app.router.add_get("/healthz", _healthz)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ai_engine.tools.webhook_sink",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--store", type=Path, help="append kept events to this JSON-lines file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        log.error("set %s to the service's webhook secret (whsec_...)", SECRET_ENV)
        return 2
    if args.store is not None:
        args.store.parent.mkdir(parents=True, exist_ok=True)
    app = create_sink_app(secret, store_path=args.store)
    log.info("webhook sink on http://%s:%d/hook", args.host, args.port)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
