"""The whole service on a GPU: `hunyuan3d` jobs through HTTP, webhook to webhook.

Writes full-size, randomly initialised Hunyuan3D-2 turbo weights in the official layout,
starts the real app on ``cuda:0`` (executor, warm-up, readiness), an image server and a
webhook receiver verifying signatures, then sends jobs and prints, per job, the time from
the POST to the signed ``asset.completed`` webhook and the job's own stage timings.

Random weights make a surface far larger than a real object's (millions of faces), so
the decoding, clean-up and export times are upper bounds; the point of this run is the
service path on the GPU, and where the time goes.

    python benchmarks/bench_service_gpu.py [--jobs 3] [--octree 256]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path

import skimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aiohttp import web

from ai_engine.app import create_app
from ai_engine.config import Settings
from tests.generators.hunyuan_fixtures import write_hunyuan
from tests.servers.web import ImageServer, WebhookReceiver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--octree", type=int, default=256)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--size", choices=["full", "tiny"], default="full",
                        help="tiny: a CPU smoke test of this script")
    args = parser.parse_args()
    import torch

    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        t0 = time.perf_counter()
        write_hunyuan(models, variants=("turbo",), size=args.size,
                      device="cuda" if cuda else "cpu")
        print(f"wrote {args.size} random turbo weights in {time.perf_counter() - t0:.1f} s",
              flush=True)
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        port = free_port()
        settings = Settings(port=port, data_dir=Path(tmp) / "data", models_dir=models,
                            devices=[args.device], generator="hunyuan3d", webhook_secret=secret,
                            allow_private_urls=True)
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        images = await ImageServer().start()
        receiver = await WebhookReceiver(secret=secret).start()
        photo = (Path(skimage.__file__).parent / "data" / "coffee.png").read_bytes()
        url = images.add("coffee.png", photo)
        import httpx

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            t0 = time.perf_counter()
            while (await http.get("/readyz")).status_code != 200:
                body = (await http.get("/readyz")).json()
                assert body["status"] != "setup_failed", body
                await asyncio.sleep(0.2)
            print(f"ready (load + warm-up) in {time.perf_counter() - t0:.1f} s", flush=True)
            for i in range(args.jobs):
                t0 = time.perf_counter()
                resp = await http.post("/generate-3d", json={
                    "session_id": "gpu", "asset_id": f"a{i}", "image_url": url,
                    "webhook_url": receiver.url, "formats": ["glb"], "seed": i,
                    "params": {"variant": "turbo", "octree_resolution": args.octree}})
                assert resp.status_code == 202, resp.text
                event = await receiver.wait_terminal(resp.json()["job_id"], timeout_s=600)
                job = event["data"]
                glb_bytes = job["assets"][0]["bytes"] if job["assets"] else 0
                print(f"job {i}: {event['type']} in {time.perf_counter() - t0:.2f} s; "
                      f"stages {job['timings']}; glb {glb_bytes} B; error {job['error']}",
                      flush=True)
            # the same jobs sent at once: the device thread generates job N+1 while the
            # CPU pool cleans up and exports job N
            t0 = time.perf_counter()
            ids = []
            for i in range(args.jobs):
                resp = await http.post("/generate-3d", json={
                    "session_id": "gpu", "asset_id": f"burst{i}", "image_url": url,
                    "webhook_url": receiver.url, "formats": ["glb"], "seed": i,
                    "params": {"variant": "turbo", "octree_resolution": args.octree}})
                ids.append(resp.json()["job_id"])
            for job_id in ids:
                await receiver.wait_terminal(job_id, timeout_s=600)
            total = time.perf_counter() - t0
            print(f"{args.jobs} jobs sent at once: all webhooks in {total:.2f} s "
                  f"({total / args.jobs:.2f} s a job)", flush=True)
            metrics = (await http.get("/metrics")).text
            print("\n".join(line for line in metrics.splitlines()
                            if line.startswith("ai_engine_jobs_finished_total")))
        if cuda:
            print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        await images.close()
        await receiver.close()
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
