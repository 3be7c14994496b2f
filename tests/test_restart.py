"""Kill -9 the service process during a job; after a restart the job finishes and the
webhook arrives (at least once, with the same webhook-id on every attempt)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import free_port
from tests.servers.engine import EngineProcess


async def start(service: EngineProcess) -> None:
    service.spawn()
    await service.wait_ready(timeout_s=60)


async def wait_status(http: httpx.AsyncClient, job_id: str, status: str) -> None:
    for _ in range(600):
        if (await http.get(f"/v1/jobs/{job_id}")).json()["status"] == status:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"job {job_id} never reached {status}")


@pytest.fixture
def service_env(tmp_path, webhook_secret):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AI_ENGINE_")}
    env.update({"AI_ENGINE_PORT": str(free_port()), "AI_ENGINE_DATA_DIR": str(tmp_path / "d"),
                "AI_ENGINE_MODELS_DIR": str(tmp_path / "m"),
                "AI_ENGINE_ALLOW_PRIVATE_URLS": "1", "AI_ENGINE_WEBHOOK_SECRET": webhook_secret,
                "AI_ENGINE_WEBHOOK_BACKOFF_BASE_S": "0.1", "AI_ENGINE_DRAIN_TIMEOUT_S": "5"})
    return env


async def test_kill_during_job_then_restart_finishes_it(service_env, tmp_path, image_server,
                                                        receiver, photo):
    service = EngineProcess("serve", service_env, tmp_path / "service.log")
    await start(service)
    image_server.delays_s["slow.png"] = 3.0  # the job sits in its fetch stage
    body = {"session_id": "r", "asset_id": "a", "webhook_url": receiver.url,
            "image_url": image_server.add("slow.png", photo)}
    async with httpx.AsyncClient(base_url=service.url) as http:
        job_id = (await http.post("/generate-3d", json=body)).json()["job_id"]
        await wait_status(http, job_id, "running")
        service.kill()
        image_server.delays_s.clear()
        await start(service)
        event = await receiver.wait_terminal(job_id, timeout_s=60)
        assert event["type"] == "asset.completed"
        assert event["data"]["attempts"] == 2
        job = (await http.get(f"/v1/jobs/{job_id}")).json()
        assert job["status"] == "succeeded"
    assert service.terminate() == 0


async def test_kill_during_webhook_delivery_resends_the_same_id(service_env, tmp_path,
                                                                image_server, receiver, photo):
    receiver.hang_s = [8.0]  # the first delivery hangs: the process dies mid-request
    service = EngineProcess("serve", service_env, tmp_path / "service.log")
    await start(service)
    body = {"session_id": "r", "asset_id": "b", "webhook_url": receiver.url,
            "image_url": image_server.add("c.png", photo)}
    async with httpx.AsyncClient(base_url=service.url) as http:
        job_id = (await http.post("/generate-3d", json=body)).json()["job_id"]
        await wait_status(http, job_id, "succeeded")
        await receiver.wait_for(lambda r: len(r.arrivals) == 1)  # in flight, stalled
        service.kill()
        await start(service)
        event = await receiver.wait_terminal(job_id, timeout_s=30)
    assert event["type"] == "asset.completed"
    # delivered at least once, and every attempt carried the same webhook-id
    assert len(receiver.arrivals) >= 2 and len(set(receiver.arrivals)) == 1
    assert service.terminate() == 0


async def test_sigterm_drains_and_requeues(service_env, tmp_path, image_server, receiver,
                                           photo):
    service_env["AI_ENGINE_DRAIN_TIMEOUT_S"] = "0.5"
    service = EngineProcess("serve", service_env, tmp_path / "service.log")
    await start(service)
    image_server.delays_s["slow.png"] = 4.0
    body = {"session_id": "r", "asset_id": "c", "webhook_url": receiver.url,
            "image_url": image_server.add("slow.png", photo)}
    async with httpx.AsyncClient(base_url=service.url) as http:
        job_id = (await http.post("/generate-3d", json=body)).json()["job_id"]
        await wait_status(http, job_id, "running")
        assert service.terminate() == 0  # a clean exit within the grace period
        image_server.delays_s.clear()
        await start(service)
        event = await receiver.wait_terminal(job_id, timeout_s=60)
        assert event["type"] == "asset.completed"
        assert event["data"]["attempts"] == 1  # the drain gave the attempt back
    assert service.terminate() == 0


def test_refuses_to_start_unauthenticated_on_a_public_address(service_env, tmp_path):
    env = {**service_env, "AI_ENGINE_HOST": "0.0.0.0"}
    proc = subprocess.run([sys.executable, "-m", "ai_engine.cli", "serve"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "AI_ENGINE_API_TOKENS" in proc.stderr
