"""Accept throughput and latency of POST /generate-3d with the durable store.

The service runs API-only in a child process (the jobs stay queued, so this
measures accepting: validation, idempotency check, durable insert, answer);
this process drives it with concurrent keep-alive clients.

    .venv/bin/python benchmarks/bench_accept.py [--jobs 20000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time

import aiohttp
import numpy as np

SERVER = """
import sys
from aiohttp import web
from ai_engine.app import create_app
from ai_engine.config import Settings
settings = Settings(port=int(sys.argv[1]), data_dir=sys.argv[2], max_queue=10**9,
                    allow_private_urls=True)
web.run_app(create_app(settings, run_executors=False), host="127.0.0.1",
            port=settings.port, print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_server(port: int, data_dir: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SERVER, str(port), data_dir],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def drive(url: str, jobs: int, concurrency: int) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(jobs))
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as http:
        async def client() -> None:
            nonlocal errors
            for i in counter:
                body = {"session_id": f"bench-{i % 97}", "asset_id": f"asset-{i}",
                        "image_url": "http://127.0.0.1:9/image.png",
                        "webhook_url": "http://127.0.0.1:9/hook", "formats": ["glb"]}
                t0 = time.perf_counter()
                async with http.post(f"{url}/generate-3d", json=body) as resp:
                    await resp.read()
                    if resp.status != 202:
                        errors += 1
                latencies.append(time.perf_counter() - t0)
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started, errors


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        proc = spawn_server(port, data_dir)
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(200):
                    try:
                        async with http.get(f"{url}/readyz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.05)
            await drive(url, 500, args.concurrency)  # warm up
            lat, elapsed, errors = await drive(url, args.jobs, args.concurrency)
        finally:
            proc.terminate()
            proc.wait(30)
    ms = np.array(lat) * 1000
    print(f"cpus: {os.cpu_count()}  jobs: {args.jobs}  concurrency: {args.concurrency}")
    print(f"accepted/s: {args.jobs / elapsed:.0f}  errors: {errors}")
    print(f"latency ms: p50 {np.percentile(ms, 50):.2f}  p90 {np.percentile(ms, 90):.2f}  "
          f"p99 {np.percentile(ms, 99):.2f}  max {ms.max():.2f}")


if __name__ == "__main__":
    asyncio.run(main())
