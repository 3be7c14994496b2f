"""Real HTTP peers for the tests, on loopback: an image server and a webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook


async def start_site(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


class ImageServer:
    """Serves byte blobs by path; `/redirect?to=URL` answers 302 to any URL."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.hits: dict[str, int] = {}
        self.delays_s: dict[str, float] = {}  # path -> seconds to stall before answering
        self.url = ""
        self._runner: web.AppRunner | None = None

    def add(self, path: str, data: bytes, content_type: str = "image/png") -> str:
        self.files[path.lstrip("/")] = (data, content_type)
        return f"{self.url}/{path.lstrip('/')}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        if name in self.delays_s:
            await asyncio.sleep(self.delays_s[name])
        if name == "redirect":
            raise web.HTTPFound(request.query["to"])
        if name not in self.files:
            raise web.HTTPNotFound()
        data, content_type = self.files[name]
        return web.Response(body=data, content_type=content_type)

    async def start(self) -> ImageServer:
        app = web.Application()
        app.router.add_get("/{name:.+}", self._handle)
        self._runner, self.url = await start_site(app)
        return self

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()


@dataclass
class Received:
    webhook_id: str
    event: dict[str, Any]
    headers: dict[str, str]
    at: float


@dataclass
class WebhookReceiver:
    """Verifies every POST with the `standardwebhooks` library before accepting it.

    ``responses`` scripts the status codes to answer in turn (then 200);
    a request with a bad signature is answered 401 and recorded in ``rejected``.
    """

    secret: str
    responses: list[int] = field(default_factory=list)
    hang_s: list[float] = field(default_factory=list)  # seconds to stall before answering
    received: list[Received] = field(default_factory=list)
    attempts: list[tuple[str, int]] = field(default_factory=list)
    arrivals: list[str] = field(default_factory=list)  # webhook-id of every verified request
    rejected: int = 0
    url: str = ""
    on_receive: Callable[[Received], None] | None = None
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            event = Webhook(self.secret).verify(body, headers)
        except Exception:
            self.rejected += 1
            return web.Response(status=401)
        self.arrivals.append(headers["webhook-id"])
        self._changed.set()
        if self.hang_s:
            await asyncio.sleep(self.hang_s.pop(0))
        status = self.responses.pop(0) if self.responses else 200
        self.attempts.append((headers["webhook-id"], status))
        if 200 <= status < 300:
            rec = Received(headers["webhook-id"], event, headers, time.time())
            self.received.append(rec)
        self._changed.set()
        extra = {"Retry-After": "1"} if status == 429 else {}
        return web.Response(status=status, headers=extra)

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner, base = await start_site(app)
        self.url = f"{base}/hook"
        return self

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def events_for(self, job_id: str) -> list[dict[str, Any]]:
        return [r.event for r in self.received if r.event["data"]["job_id"] == job_id]

    async def wait_for(self, predicate: Callable[[WebhookReceiver], bool], *,
                       timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"webhooks so far: {json.dumps(self.attempts)}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.5))

    async def wait_terminal(self, job_id: str, *, timeout_s: float = 30.0) -> dict[str, Any]:
        def done(r: WebhookReceiver) -> bool:
            return any(e["type"] in ("asset.completed", "asset.failed")
                       for e in r.events_for(job_id))
        await self.wait_for(done, timeout_s=timeout_s)
        return next(e for e in self.events_for(job_id)
                    if e["type"] in ("asset.completed", "asset.failed"))
