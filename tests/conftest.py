"""Shared fixtures: settings for a throwaway data dir, real loopback peers, the app."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import skimage
from aiohttp.test_utils import TestClient

from ai_engine.app import create_app
from ai_engine.config import Settings
from tests.servers.web import ImageServer, WebhookReceiver

pytest_plugins = ["tests.servers.seaweedfs"]

SKIMAGE_DATA = Path(os.path.dirname(skimage.__file__)) / "data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def photo() -> bytes:
    """A real photo with a background: a coffee cup and saucer on a plain backdrop."""
    return (SKIMAGE_DATA / "coffee.png").read_bytes()


@pytest.fixture
def webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@pytest.fixture
def make_settings(tmp_path: Path, webhook_secret: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data", "models_dir": tmp_path / "models",
            "allow_private_urls": True, "webhook_secret": webhook_secret,
            "webhook_backoff_base_s": 0.05, "webhook_backoff_max_s": 0.5,
            "devices": ["cpu"], "generator": "silhouette",
        }
        values.update(overrides)
        return Settings(**values)
    return make


@pytest.fixture
async def image_server() -> AsyncIterator[ImageServer]:
    server = await ImageServer().start()
    yield server
    await server.close()


@pytest.fixture
async def receiver(webhook_secret: str) -> AsyncIterator[WebhookReceiver]:
    rec = await WebhookReceiver(secret=webhook_secret).start()
    yield rec
    await rec.close()


async def wait_ready(client: TestClient, *, timeout_s: float = 60.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        resp = await client.get("/readyz")
        body = await resp.json()
        if resp.status == 200:
            return
        assert body["status"] != "setup_failed", body
        await asyncio.sleep(0.05)
    raise TimeoutError("service never became ready")


@pytest.fixture
def start_service(aiohttp_client: Callable[..., Awaitable[TestClient]]
                  ) -> Callable[..., Awaitable[TestClient]]:
    """Start the real app (in this process, on loopback) and wait until it is ready."""
    async def start(settings: Settings, *, ready: bool = True,
                    run_executors: bool = True) -> TestClient:
        port = free_port()
        settings = settings.model_copy(update={"port": port})
        app = create_app(settings, run_executors=run_executors)
        client = await aiohttp_client(app, server_kwargs={"port": port})
        if ready:
            await wait_ready(client)
        return client
    return start


async def wait_job(client: TestClient, job_id: str, *, timeout_s: float = 60.0,
                   headers: dict[str, str] | None = None) -> dict[str, Any]:
    for _ in range(int(timeout_s / 0.05)):
        resp = await client.get(f"/v1/jobs/{job_id}", headers=headers)
        job = await resp.json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        await asyncio.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not finish: {job}")
