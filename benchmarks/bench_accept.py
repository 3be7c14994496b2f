"""Accept throughput and latency of POST /generate-3d with the durable store.

The service runs API-only in a child process (the jobs stay queued, so this
measures accepting: validation, idempotency check, durable insert, answer).
The load comes from `wrk` (C, little CPU of its own) when it is installed
(Debian: `apt-get install wrk`), else from this process's aiohttp clients,
which take about as much CPU as the server on a small machine.

    .venv/bin/python benchmarks/bench_accept.py [--jobs 20000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
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


WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"session_id":"wrk-%d","asset_id":"a-%d-%d",' ..
    '"image_url":"http://127.0.0.1:9/image.png","webhook_url":"http://127.0.0.1:9/hook"}',
    counter % 97, math.random(1, 2^30), counter)
  return wrk.format("POST", "/generate-3d", {["Content-Type"] = "application/json"}, body)
end
"""


def run_wrk(url: str, *, seconds: int, concurrency: int) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT)
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency",
                              "-s", f.name, url], capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    lat = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)$", out.stdout, re.M))
    print(f"load: wrk, 1 thread, {concurrency} connections, {seconds} s")
    print(f"accepted/s: {float(rps.group(1)) if rps else float('nan'):.0f}  "
          f"errors: {non2xx.group(1) if non2xx else 0}")
    print(f"latency: p50 {lat.get('50')}  p90 {lat.get('90')}  p99 {lat.get('99')}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_server(port: int, data_dir: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SERVER, str(port), data_dir],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def drive(url: str, jobs: int, concurrency: int, *, run: str
                ) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(jobs))
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as http:
        async def client() -> None:
            nonlocal errors
            for i in counter:
                body = {"session_id": f"bench-{i % 97}", "asset_id": f"{run}-{i}",
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
    parser.add_argument("--seconds", type=int, default=10, help="duration with wrk")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
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
            await drive(url, 500, args.concurrency, run="warmup")
            if args.client == "wrk" or (args.client == "auto" and shutil.which("wrk")):
                print(f"cpus: {os.cpu_count()}")
                run_wrk(url, seconds=args.seconds, concurrency=args.concurrency)
                return
            lat, elapsed, errors = await drive(url, args.jobs, args.concurrency, run="run")
        finally:
            proc.terminate()
            proc.wait(30)
    ms = np.array(lat) * 1000
    print(f"cpus: {os.cpu_count()}  load: python aiohttp clients  jobs: {args.jobs}  "
          f"concurrency: {args.concurrency}")
    print(f"accepted/s: {args.jobs / elapsed:.0f}  errors: {errors}")
    print(f"latency ms: p50 {np.percentile(ms, 50):.2f}  p90 {np.percentile(ms, 90):.2f}  "
          f"p99 {np.percentile(ms, 99):.2f}  max {ms.max():.2f}")


if __name__ == "__main__":
    asyncio.run(main())
