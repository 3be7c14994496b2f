"""Real `ai-engine serve` and `ai-engine worker` processes on one Redis, for tests."""

from __future__ import annotations

import asyncio
import io
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from tests.conftest import free_port
from tests.imaging.images import disc_scene
from tests.servers.engine import EngineProcess


def small_photo() -> bytes:
    """A small photo-like PNG (a disc on a plain background): quick jobs."""
    rgba, _ = disc_scene(size=(96, 128), centre=(48, 64), radius=32)
    buffer = io.BytesIO()
    Image.fromarray(rgba[..., :3]).save(buffer, format="PNG")
    return buffer.getvalue()


class Fleet:
    """API and worker processes sharing one Redis key prefix and one data directory."""

    def __init__(self, tmp_path: Path, *, redis_url: str, webhook_secret: str,
                 **settings: Any) -> None:
        self.tmp_path = tmp_path
        self.processes: list[EngineProcess] = []
        self.base = {k: v for k, v in os.environ.items() if not k.startswith("AI_ENGINE_")}
        self.api_port = free_port()
        values: dict[str, Any] = {
            "QUEUE_URL": redis_url, "QUEUE_PREFIX": "f" + uuid.uuid4().hex[:8],
            "DATA_DIR": tmp_path / "data", "MODELS_DIR": tmp_path / "models",
            "ALLOW_PRIVATE_URLS": 1, "WEBHOOK_SECRET": webhook_secret,
            "WEBHOOK_BACKOFF_BASE_S": 0.1, "WEBHOOK_BACKOFF_MAX_S": 1, "DRAIN_TIMEOUT_S": 5,
            "GENERATOR": "silhouette", "DEVICES": "cpu", "CPU_WORKERS": 1,
            "PUBLIC_URL": f"http://127.0.0.1:{self.api_port}", **settings}
        self.base.update({f"AI_ENGINE_{k.upper()}": str(v) for k, v in values.items()})
        self.base["PYTHONUNBUFFERED"] = "1"

    def add(self, command: str, **settings: Any) -> EngineProcess:
        env = dict(self.base)
        port = self.api_port if command == "serve" and not any(
            p.command == "serve" for p in self.processes) else free_port()
        env["AI_ENGINE_PORT"] = str(port)
        if command == "serve":
            env.setdefault("AI_ENGINE_EXECUTORS", "0")
        env.update({f"AI_ENGINE_{k.upper()}": str(v) for k, v in settings.items()})
        name = f"{command}{sum(p.command == command for p in self.processes) + 1}"
        process = EngineProcess(command, env, self.tmp_path / f"{name}.log")
        self.processes.append(process)
        return process

    async def start(self, *processes: EngineProcess) -> None:
        for process in processes:
            process.spawn()
        await asyncio.gather(*(p.wait_ready() for p in processes))

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log_path.read_text()[-3000:]}"
                         for p in self.processes if p.log_path.exists())


async def wait_terminal(http: httpx.AsyncClient, job_ids: list[str], *,
                        timeout_s: float) -> dict[str, dict[str, Any]]:
    """Poll until every job is terminal; returns the jobs."""
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(done) < len(job_ids):
        if time.monotonic() > deadline:
            missing = [j for j in job_ids if j not in done][:5]
            raise TimeoutError(f"{len(job_ids) - len(done)} jobs unfinished, e.g. {missing}")
        for job_id in job_ids:
            if job_id not in done:
                job = (await http.get(f"/v1/jobs/{job_id}")).json()
                if job["status"] in ("succeeded", "failed", "canceled"):
                    done[job_id] = job
        await asyncio.sleep(0.2)
    return done
