"""A `silhouette` job end to end, fetch to webhook, on this machine.

Starts `ai-engine serve` as a child process (embedded defaults: SQLite, local
storage, silhouette), an image server and a webhook receiver (which verifies
signatures) in this process, then submits jobs one at a time and measures from
the POST to the arrival of the signed `asset.completed` webhook.

    .venv/bin/python benchmarks/bench_e2e.py [--jobs 20] [--formats glb]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import skimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers.web import ImageServer, WebhookReceiver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ai_engine.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--formats", default="glb")
    args = parser.parse_args()
    photo = (Path(skimage.__file__).parent / "data" / "coffee.png").read_bytes()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    images = await ImageServer().start()
    receiver = await WebhookReceiver(secret=secret).start()
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "AI_ENGINE_PORT": str(port), "AI_ENGINE_DATA_DIR": data_dir,
               "AI_ENGINE_ALLOW_PRIVATE_URLS": "1", "AI_ENGINE_WEBHOOK_SECRET": secret}
        proc = spawn(env)
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=url) as http:
                for _ in range(300):
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
                image_url = images.add("coffee.png", photo)
                seconds, stages = [], []
                for i in range(args.jobs + 2):  # the first two warm the caches up
                    t0 = time.perf_counter()
                    resp = await http.post("/generate-3d", json={
                        "session_id": "bench", "asset_id": f"a{i}", "image_url": image_url,
                        "webhook_url": receiver.url, "formats": args.formats.split(",")})
                    event = await receiver.wait_terminal(resp.json()["job_id"])
                    assert event["type"] == "asset.completed", event
                    if i >= 2:
                        seconds.append(time.perf_counter() - t0)
                        stages.append(event["data"]["timings"])
        finally:
            proc.terminate()
            proc.wait(30)
    await images.close()
    await receiver.close()
    s = np.array(seconds)
    print(f"cpus: {os.cpu_count()}  jobs: {args.jobs}  formats: {args.formats}")
    print(f"end to end (POST -> signed webhook) s: p50 {np.median(s):.3f}  "
          f"p90 {np.percentile(s, 90):.3f}  max {s.max():.3f}")
    for stage in stages[0]:
        values = [t.get(stage, 0.0) for t in stages]
        print(f"  {stage:14s} p50 {np.median(values) * 1000:7.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
