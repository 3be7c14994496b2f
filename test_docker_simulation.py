#!/usr/bin/env python3
"""End-to-end check of the whole stack, used the way an integrator's Worker uses it.

    python test_docker_simulation.py [--mode auto|local|docker] [--jobs 12] [--gpu|--cpu]

1. Start the stack. ``docker``: ``docker compose up`` of docker-compose.yml with
   docker/compose.dev.yml (profile ``dev``: the webhook sink), plus
   docker/compose.cpu.yml on a host without the NVIDIA runtime. ``local``: the
   same services as processes on loopback: SeaweedFS, ``ai-engine serve`` storing
   to it (S3), the webhook sink, and an image server. ``auto`` (the default) is
   ``docker`` when a Docker engine answers, else ``local``.
2. Put a real photo (scikit-image's coffee cup) where the service can fetch it:
   a presigned S3 URL, and in local mode also a plain HTTP server.
3. Fan the jobs out as a Cloudflare Worker does: all at once, fire and forget,
   with duplicates of two requests sent concurrently (one job each, answered
   202 and 200), one request whose image URL is missing (it must end ``failed``
   with ``fetch.http_status``), and one late duplicate once everything is done.
4. Wait for the webhooks at the sink, verify every signature here again
   (Standard Webhooks), download every asset through its presigned URL, check
   its size and sha256, and load it (GLB/STL/OBJ/PLY with trimesh, splat PLY and
   SPZ by their headers).
5. Print a table (job, status, seconds, bytes), tear the stack down, and exit
   0 when every job ended as expected, 1 on any miss, 2 when the stack never came up.

pytest runs the local mode with a small batch (``test_simulation_local``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from standardwebhooks.webhooks import Webhook
from yarl import URL

ROOT = Path(__file__).resolve().parent
BAD_URL_CODE = "fetch.http_status"
TERMINAL = ("asset.completed", "asset.failed")
HostMap = dict[tuple[str, int], tuple[str, int]]


class StackError(RuntimeError):
    """The stack did not come up (exit code 2)."""


@dataclass(frozen=True)
class Stack:
    """How the harness and the service reach each other."""

    api_url: str
    api_token: str
    webhook_secret: str
    webhook_url: str  # as the service reaches the sink
    events_url: str  # as the harness reaches the sink
    image_urls: list[str]  # where the service finds the photo
    bad_image_url: str  # a URL that answers 404
    host_map: HostMap = field(default_factory=dict)  # in-network host:port -> published


@dataclass
class Planned:
    body: dict[str, Any]
    expect: str = "succeeded"
    duplicate: bool = False


@dataclass
class Outcome:
    """One job as seen from outside: answers, webhooks, assets, and what went wrong."""

    asset_id: str
    expect: str
    submitted_at: float
    answers: list[int] = field(default_factory=list)
    job_id: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    status: str = "missing"
    code: str = ""
    seconds: float | None = None
    nbytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# -- the batch ------------------------------------------------------------------


def plan_batch(stack: Stack, *, jobs: int, session_id: str,
               generator: str | None = None) -> list[Planned]:
    """``jobs`` requests: distinct assets, duplicates of the first one or two, one bad URL.

    ``generator`` None leaves the choice to the service's default.
    """
    if jobs < 4:
        raise ValueError("a batch needs at least 4 requests (2 assets, 1 duplicate, 1 bad URL)")
    duplicates = 2 if jobs >= 6 else 1
    distinct = jobs - duplicates - 1
    planned = []
    for i in range(distinct):
        body: dict[str, Any] = {
            "session_id": session_id, "asset_id": f"asset-{i:02d}",
            "image_url": stack.image_urls[i % len(stack.image_urls)],
            "webhook_url": stack.webhook_url, "seed": 1000 + i,
            "formats": formats_for(generator, first=i == 0)}
        if generator:
            body["generator"] = generator
        if i % 3 == 1:
            body["webhook_events"] = ["started", "completed"]
        planned.append(Planned(body))
    planned += [Planned(dict(planned[i].body), duplicate=True) for i in range(duplicates)]
    planned.append(Planned({"session_id": session_id, "asset_id": "bad-url",
                            "image_url": stack.bad_image_url,
                            "webhook_url": stack.webhook_url}, expect="failed"))
    return planned


def formats_for(generator: str | None, *, first: bool) -> list[str]:
    """Meshes, except from TRELLIS (Gaussians only); the first job asks for two formats."""
    if generator == "trellis":
        return ["splat_ply", "spz"] if first else ["splat_ply"]
    return ["glb", "stl"] if first else ["glb"]


async def submit(http: aiohttp.ClientSession, stack: Stack,
                 planned: list[Planned]) -> dict[str, Outcome]:
    """POST every request at once; one :class:`Outcome` per asset id."""
    outcomes: dict[str, Outcome] = {}
    for p in planned:
        outcomes.setdefault(p.body["asset_id"], Outcome(p.body["asset_id"], p.expect,
                                                        time.time()))
    headers = {"Authorization": f"Bearer {stack.api_token}"}

    async def post(p: Planned) -> None:
        out = outcomes[p.body["asset_id"]]
        try:
            async with http.post(f"{stack.api_url}/generate-3d", json=p.body,
                                 headers=headers) as resp:
                answer = await resp.json(content_type=None)
                out.answers.append(resp.status)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            out.problems.append(f"POST failed: {exc!r}")
            return
        job_id = answer.get("job_id", "") if isinstance(answer, dict) else ""
        if resp.status not in (200, 202) or not job_id:
            out.problems.append(f"POST answered {resp.status}: {brief(answer)}")
        elif out.job_id and out.job_id != job_id:
            out.problems.append(f"duplicate made a second job {job_id} (first {out.job_id})")
        out.job_id = out.job_id or job_id

    await asyncio.gather(*(post(p) for p in planned))
    for out in outcomes.values():
        out.problems = list(dict.fromkeys(out.problems))  # a duplicate's refusal once
        expected = [200, 202] if len(out.answers) == 2 else [202]
        if out.job_id and sorted(out.answers) != expected:
            out.problems.append(f"answers {sorted(out.answers)}, expected {expected}")
    return outcomes


def brief(answer: object) -> str:
    """A problem+json answer in one short line."""
    if not isinstance(answer, dict):
        return str(answer)[:200]
    errors = "; ".join(str(e.get("msg", e)) for e in answer.get("errors") or [])
    return f"{answer.get('title', '')}: {errors or answer.get('detail', '')}"[:200]


# -- webhooks ---------------------------------------------------------------------


async def collect_webhooks(http: aiohttp.ClientSession, stack: Stack,
                           outcomes: dict[str, Outcome], *, timeout_s: float) -> int:
    """Poll the sink until every job has its terminal event; returns the sink's rejected count.

    Each event is verified here as it arrives (the signature's timestamp is only
    accepted for five minutes), independently of the sink's own check.
    """
    verifier = Webhook(stack.webhook_secret)
    by_job = {o.job_id: o for o in outcomes.values() if o.job_id}
    seen, rejected = 0, 0
    deadline = time.monotonic() + timeout_s
    while True:
        async with http.get(stack.events_url, params={"after": str(seen)}) as resp:
            listing = await resp.json()
        rejected = int(listing["rejected"])
        for event in listing["events"]:
            seen += 1
            headers = {"webhook-id": event["webhook_id"],
                       "webhook-timestamp": event["webhook_timestamp"],
                       "webhook-signature": event["webhook_signature"]}
            try:
                payload = verifier.verify(event["body"], headers)
            except Exception as exc:
                owner = by_job.get(event.get("job_id") or "")
                if owner is not None:
                    owner.problems.append(f"bad signature on {event['type']}: {exc}")
                continue
            owner = by_job.get(payload["data"]["job_id"])
            if owner is not None:
                payload["received_at"] = event["received_at"]
                owner.events.append(payload)
        if all(any(e["type"] in TERMINAL for e in o.events) for o in by_job.values()):
            return rejected
        if time.monotonic() > deadline:
            return rejected
        await asyncio.sleep(0.25)


# -- assets -----------------------------------------------------------------------


def validate_asset(fmt: str, data: bytes) -> str | None:
    """None when ``data`` is a non-empty, loadable ``fmt`` asset; otherwise why not."""
    if not data:
        return "empty file"
    if fmt in ("glb", "stl", "obj", "ply"):
        import numpy as np
        import trimesh

        try:
            mesh = trimesh.load(io.BytesIO(data), file_type=fmt, force="mesh")
        except Exception as exc:
            return f"trimesh cannot load it: {exc!r}"
        if not isinstance(mesh, trimesh.Trimesh):
            return f"not a mesh ({type(mesh).__name__})"
        if len(mesh.vertices) == 0 or len(mesh.faces) == 0:
            return "mesh without faces"
        if not np.isfinite(mesh.vertices).all():
            return "non-finite vertex positions"
        return None
    if fmt == "splat_ply":
        head = data[:4096].split(b"end_header", 1)[0].decode("ascii", "replace")
        lines = head.splitlines()
        count = next((int(ln.split()[2]) for ln in lines if ln.startswith("element vertex")), 0)
        if not head.startswith("ply") or count <= 0 or "property float f_dc_0" not in head:
            return "not a 3DGS PLY with Gaussians"
        return None
    if fmt == "spz":
        try:
            raw = gzip.decompress(data)
        except OSError as exc:
            return f"not gzip: {exc}"
        if raw[:4] != b"NGSP" or int.from_bytes(raw[8:12], "little") <= 0:
            return "not an SPZ with Gaussians"
        return None
    return f"unknown format {fmt}"


async def check_assets(http: aiohttp.ClientSession, out: Outcome, job: dict[str, Any],
                       formats: list[str]) -> None:
    """Download every asset of a succeeded job and check it."""
    got = {a["format"] for a in job.get("assets") or []}
    if missing := [f for f in formats if f not in got]:
        out.problems.append(f"formats missing from the webhook: {missing}")
    for asset in job.get("assets") or []:
        try:
            async with http.get(URL(asset["url"], encoded=True)) as resp:
                data = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            out.problems.append(f"{asset['format']}: download failed: {exc!r}")
            continue
        if status != 200:
            out.problems.append(f"{asset['format']}: download answered {status}")
            continue
        out.nbytes += len(data)
        if len(data) != asset["bytes"] or hashlib.sha256(data).hexdigest() != asset["sha256"]:
            out.problems.append(f"{asset['format']}: size or sha256 differs from the webhook")
        if why := validate_asset(asset["format"], data):
            out.problems.append(f"{asset['format']}: {why}")


async def judge(http: aiohttp.ClientSession, outcomes: dict[str, Outcome],
                planned: list[Planned]) -> None:
    """Fill each outcome's status, code, seconds and problems from its events."""
    bodies = {p.body["asset_id"]: p.body for p in planned}
    for out in outcomes.values():
        if not out.job_id:
            continue
        terminal = [e for e in out.events if e["type"] in TERMINAL]
        if not terminal:
            out.problems.append("no terminal webhook")
            continue
        if len(terminal) > 1:
            out.problems.append(f"{len(terminal)} terminal webhooks")
        job = terminal[0]["data"]
        out.status = job["status"]
        out.code = (job.get("error") or {}).get("code", "")
        out.seconds = terminal[0]["received_at"] - out.submitted_at
        wanted = bodies[out.asset_id].get("webhook_events", ["completed"])
        if "started" in wanted and not any(e["type"] == "asset.started" for e in out.events):
            out.problems.append("asset.started was asked for, never sent")
        if out.status != out.expect:
            out.problems.append(f"ended {out.status} ({out.code}), expected {out.expect}")
        elif out.expect == "failed" and out.code != BAD_URL_CODE:
            out.problems.append(f"failed with {out.code!r}, expected {BAD_URL_CODE}")
        elif out.status == "succeeded":
            await check_assets(http, out, job, bodies[out.asset_id].get("formats", ["glb"]))


async def late_duplicate(http: aiohttp.ClientSession, stack: Stack, planned: Planned,
                         out: Outcome) -> None:
    """Resending a finished job's request answers 200 with the same, finished job."""
    async with http.post(f"{stack.api_url}/generate-3d", json=planned.body,
                         headers={"Authorization": f"Bearer {stack.api_token}"}) as resp:
        answer = await resp.json(content_type=None)
    if resp.status != 200 or answer.get("job_id") != out.job_id:
        out.problems.append(f"late duplicate answered {resp.status} {answer}")


def summary(outcomes: dict[str, Outcome], *, rejected: int) -> str:
    rows = [("job", "job id", "status", "code", "seconds", "bytes", "result")]
    for o in outcomes.values():
        rows.append((o.asset_id, o.job_id[:12], o.status, o.code or "-",
                     f"{o.seconds:.1f}" if o.seconds is not None else "-", str(o.nbytes),
                     "ok" if o.ok else "MISS: " + "; ".join(o.problems)))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:6], widths, strict=True)) + "  " + r[6]
             for r in rows]
    misses = sum(not o.ok for o in outcomes.values())
    lines.append(f"{len(outcomes)} jobs, {misses} missed, {rejected} webhooks rejected "
                 "by the sink")
    return "\n".join(lines)


async def simulate(stack: Stack, *, jobs: int, timeout_s: float,
                   generator: str | None = None) -> tuple[bool, str]:
    """Run one batch against a started stack; (every job as expected, the table)."""
    planned = plan_batch(stack, jobs=jobs, session_id=f"sim-{uuid.uuid4().hex[:10]}",
                         generator=generator)
    connector = aiohttp.TCPConnector(resolver=MappedResolver(stack.host_map))
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as http:
        outcomes = await submit(http, stack, planned)
        rejected = await collect_webhooks(http, stack, outcomes, timeout_s=timeout_s)
        await judge(http, outcomes, planned)
        first = outcomes[planned[0].body["asset_id"]]
        if first.job_id:
            await late_duplicate(http, stack, planned[0], first)
    table = summary(outcomes, rejected=rejected)
    return all(o.ok for o in outcomes.values()) and rejected == 0, table


class MappedResolver(AbstractResolver):
    """Sends ``host:port`` pairs of the stack's network to their published addresses.

    Presigned URLs name the S3 endpoint as the service sees it (``seaweedfs:8333``
    in compose); the request must keep that Host header for the signature to
    hold, so only the connection is redirected.
    """

    def __init__(self, host_map: HostMap) -> None:
        self._map = host_map
        self._default = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if (host, port) in self._map:
            ip, published = self._map[(host, port)]
            return [ResolveResult(hostname=host, host=ip, port=published, family=socket.AF_INET,
                                  proto=0, flags=socket.AI_NUMERICHOST)]
        return await self._default.resolve(host, port, family)

    async def close(self) -> None:
        await self._default.close()


# -- stacks -------------------------------------------------------------------------


def photo() -> bytes:
    import skimage

    return (Path(skimage.__file__).parent / "data" / "coffee.png").read_bytes()


def presign(*, endpoint: str, bucket: str, key: str, access: str, secret: str,
            region: str) -> str:
    """A presigned GET URL for ``key`` as seen from ``endpoint`` (signing needs no network)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, region_name=region,
                          aws_access_key_id=access, aws_secret_access_key=secret,
                          config=Config(signature_version="s3v4",
                                        s3={"addressing_style": "path"}))
    return str(client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                             ExpiresIn=3600))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_http(url: str, *, timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
                    name: str) -> None:
    """Wait until ``url`` answers 200; StackError when ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode} before it was ready")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
                    body = await resp.text()
                    if "setup_failed" in body:
                        raise StackError(f"{name}: {body}")
            await asyncio.sleep(0.1)
    raise StackError(f"{name} not ready at {url} after {timeout_s:.0f} s")


@contextlib.asynccontextmanager
async def local_stack(*, logs: Path) -> AsyncIterator[Stack]:
    """SeaweedFS, the webhook sink, ``ai-engine serve`` (S3 storage) and an image server."""
    import base64
    import secrets

    from tests.servers.seaweedfs import run_seaweedfs
    from tests.servers.web import ImageServer

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    token = secrets.token_urlsafe(24)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    images = await ImageServer().start()
    try:
        with run_seaweedfs(bucket="sim-assets", public_bucket="sim-public") as s3:
            await asyncio.to_thread(s3.client().put_object, Bucket=s3.bucket,
                                    Key="inputs/coffee.png", Body=photo(),
                                    ContentType="image/png")
            sign = {"endpoint": s3.endpoint_url, "bucket": s3.bucket,
                    "access": s3.access_key_id, "secret": s3.secret_access_key,
                    "region": s3.region}
            sink_port, api_port = free_port(), free_port()
            env = {**os.environ, "AI_ENGINE_WEBHOOK_SECRET": secret}
            procs.append(("webhook-sink", spawn(
                [sys.executable, "-m", "ai_engine.tools.webhook_sink", "--port", str(sink_port)],
                env=env, log=logs / "webhook-sink.log")))
            env |= s3.env() | {
                "AI_ENGINE_HOST": "127.0.0.1", "AI_ENGINE_PORT": str(api_port),
                "AI_ENGINE_API_TOKENS": token, "AI_ENGINE_DATA_DIR": str(logs / "data"),
                "AI_ENGINE_MODELS_DIR": str(logs / "models"), "AI_ENGINE_DEVICES": "cpu",
                "AI_ENGINE_GENERATOR": "silhouette", "AI_ENGINE_ALLOW_PRIVATE_URLS": "1",
                "AI_ENGINE_DRAIN_TIMEOUT_S": "20"}
            procs.append(("ai-engine", spawn([sys.executable, "-m", "ai_engine.cli", "serve"],
                                             env=env, log=logs / "ai-engine.log")))
            sink, api = f"http://127.0.0.1:{sink_port}", f"http://127.0.0.1:{api_port}"
            await wait_http(f"{sink}/healthz", timeout_s=30, proc=procs[0][1],
                            name="webhook sink")
            await wait_http(f"{api}/readyz", timeout_s=120, proc=procs[1][1], name="ai-engine")
            yield Stack(api_url=api, api_token=token, webhook_secret=secret,
                        webhook_url=f"{sink}/hook", events_url=f"{sink}/events",
                        image_urls=[images.add("coffee.png", photo()),
                                    presign(key="inputs/coffee.png", **sign)],
                        bad_image_url=f"{images.url}/missing.png")
            await asyncio.to_thread(stop_all, procs)
    finally:
        stop_all(procs, quiet=True)
        await images.close()


def spawn(cmd: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def stop_all(procs: list[tuple[str, subprocess.Popen[bytes]]], *, quiet: bool = False) -> None:
    """SIGTERM in reverse start order; a service that does not drain and exit 0 is a failure."""
    failures = []
    while procs:
        name, proc = procs.pop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                failures.append(f"{name} ignored SIGTERM for 60 s")
        if proc.returncode != 0:
            failures.append(f"{name} exited with {proc.returncode} on SIGTERM")
    if failures and not quiet:
        raise StackError("; ".join(failures))


# -- docker ---------------------------------------------------------------------------

COMPOSE_PROJECT = "ai-engine-sim"


def compose_command() -> list[str]:
    """``docker compose`` (plugin) or the standalone ``docker-compose``."""
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise StackError("neither `docker compose` nor `docker-compose` is installed")


def docker_engine_running() -> bool:
    return bool(shutil.which("docker")) and subprocess.run(
        ["docker", "info"], capture_output=True).returncode == 0


def nvidia_runtime() -> bool:
    result = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"],
                            capture_output=True, text=True)
    return result.returncode == 0 and "nvidia" in result.stdout


def compose_args(*, gpu: bool) -> list[str]:
    """Files, project and profile of the simulated stack (``gpu``: the GPU image)."""
    files = ["docker-compose.yml"] + ([] if gpu else ["docker/compose.cpu.yml"])
    files.append("docker/compose.dev.yml")
    args = ["--project-name", COMPOSE_PROJECT, "--project-directory", str(ROOT)]
    for name in files:
        args += ["-f", str(ROOT / name)]
    return [*args, "--profile", "dev"]


def stack_settings(config: dict[str, Any]) -> dict[str, str]:
    """What the harness needs from ``compose config --format json``: token, secret, S3."""
    env = config["services"]["ai-engine"].get("environment") or {}
    sink_env = config["services"]["webhook-sink"].get("environment") or {}
    tokens = [t for t in (env.get("AI_ENGINE_API_TOKENS") or "").split(",") if t.strip()]
    secret = sink_env.get("AI_ENGINE_WEBHOOK_SECRET") or ""
    if not tokens or not secret or secret != env.get("AI_ENGINE_WEBHOOK_SECRET"):
        raise StackError("the stack needs AI_ENGINE_API_TOKENS and one AI_ENGINE_WEBHOOK_SECRET "
                         "shared by ai-engine and webhook-sink (docker/compose.dev.yml)")
    return {"token": tokens[0].strip(), "secret": secret,
            "endpoint": env["AI_ENGINE_S3_ENDPOINT_URL"], "bucket": env["AI_ENGINE_S3_BUCKET"],
            "region": env.get("AI_ENGINE_S3_REGION") or "us-east-1",
            "access": env["AWS_ACCESS_KEY_ID"], "secret_key": env["AWS_SECRET_ACCESS_KEY"]}


def published(compose: list[str], service: str, port: int) -> tuple[str, int]:
    """Where ``service``'s container port is published on this host."""
    out = subprocess.run([*compose, "port", service, str(port)], capture_output=True, text=True,
                         cwd=ROOT).stdout.strip()
    host, _, number = out.rpartition(":")
    if not number.isdigit():
        raise StackError(f"{service}:{port} is not published ({out!r})")
    host = host.strip("[]")
    return ("127.0.0.1" if host in ("", "0.0.0.0", "::") else host), int(number)


def docker_up(compose: list[str], *, wait_s: float) -> Stack:
    """``compose up --build --wait``, then the photo into the bucket; the stack's addresses."""
    config = json.loads(subprocess.run([*compose, "config", "--format", "json"], cwd=ROOT,
                                       capture_output=True, text=True, check=True).stdout)
    s = stack_settings(config)
    up = subprocess.run([*compose, "up", "--detach", "--build", "--wait", "--wait-timeout",
                         str(int(wait_s))], cwd=ROOT)
    if up.returncode != 0:
        raise StackError(f"`compose up` exited with {up.returncode}")
    api, sink, s3 = (published(compose, "ai-engine", 8000),
                     published(compose, "webhook-sink", 9000),
                     published(compose, "seaweedfs", 8333))
    import boto3

    boto3.client("s3", endpoint_url=f"http://{s3[0]}:{s3[1]}", region_name=s["region"],
                 aws_access_key_id=s["access"], aws_secret_access_key=s["secret_key"]
                 ).put_object(Bucket=s["bucket"], Key="sim-inputs/coffee.png", Body=photo(),
                              ContentType="image/png")
    sign = {"endpoint": s["endpoint"], "bucket": s["bucket"], "access": s["access"],
            "secret": s["secret_key"], "region": s["region"]}
    inner = URL(s["endpoint"])
    return Stack(api_url=f"http://{api[0]}:{api[1]}", api_token=s["token"],
                 webhook_secret=s["secret"], webhook_url="http://webhook-sink:9000/hook",
                 events_url=f"http://{sink[0]}:{sink[1]}/events",
                 image_urls=[presign(key="sim-inputs/coffee.png", **sign)],
                 bad_image_url=presign(key="sim-inputs/missing.png", **sign),
                 host_map={(inner.host or "", inner.port or 80): s3})


def docker_down(compose: list[str], *, logs: Path) -> None:
    """Keep every container's log in ``logs/compose.log``, then remove the stack and its volumes."""
    with (logs / "compose.log").open("wb") as out:
        subprocess.run([*compose, "logs", "--no-color"], cwd=ROOT, stdout=out,
                       stderr=subprocess.STDOUT)
    subprocess.run([*compose, "down", "--volumes", "--remove-orphans"], cwd=ROOT)


@contextlib.asynccontextmanager
async def docker_stack(*, gpu: bool, logs: Path, wait_s: float) -> AsyncIterator[Stack]:
    """The compose stack (``docker compose up``), torn down with its volumes afterwards."""
    compose = [*compose_command(), *compose_args(gpu=gpu)]
    try:
        yield await asyncio.to_thread(docker_up, compose, wait_s=wait_s)
    finally:
        await asyncio.to_thread(docker_down, compose, logs=logs)


# -- entry points -------------------------------------------------------------------------


async def run(*, mode: str, jobs: int, timeout_s: float, gpu: bool | None = None,
              generator: str | None = None, logs: Path) -> int:
    """Start the stack of ``mode``, run one batch, print the table; the exit code."""
    if mode == "auto":
        mode = "docker" if docker_engine_running() else "local"
    print(f"mode: {mode}; logs in {logs}", flush=True)
    started = time.monotonic()
    ok, table = False, ""
    try:
        if mode == "local":
            stack_cm = local_stack(logs=logs)
        else:
            use_gpu = nvidia_runtime() if gpu is None else gpu
            stack_cm = docker_stack(gpu=use_gpu, logs=logs, wait_s=max(timeout_s, 900))
        async with stack_cm as stack:
            ok, table = await simulate(stack, jobs=jobs, timeout_s=timeout_s,
                                       generator=generator)
    except (StackError, subprocess.CalledProcessError, OSError) as exc:
        print(table)
        print(f"stack failure: {exc}", file=sys.stderr)
        print_log_tails(logs)
        return 2
    print(table)
    print(f"{'PASS' if ok else 'FAIL'} in {time.monotonic() - started:.1f} s")
    return 0 if ok else 1


def print_log_tails(logs: Path) -> None:
    for log in sorted(logs.glob("*.log")):
        tail = log.read_text(errors="replace")[-3000:]
        print(f"--- {log.name} (last lines)\n{tail}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["auto", "local", "docker"], default="auto")
    parser.add_argument("--jobs", type=int, default=12, help="requests in the batch (>= 4)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for the webhooks (local 120, docker 1800)")
    gpu = parser.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="gpu", action="store_true", default=None,
                     help="docker: the GPU image (default when the NVIDIA runtime is there)")
    gpu.add_argument("--cpu", dest="gpu", action="store_false", help="docker: the CPU image")
    parser.add_argument("--generator", choices=["silhouette", "hunyuan3d", "trellis"],
                        help="ask every job for this generator (default: the service's own)")
    parser.add_argument("--logs", type=Path, help="keep service logs here")
    args = parser.parse_args(argv)
    timeout_s = args.timeout or (120.0 if args.mode == "local" else 1800.0)
    with tempfile.TemporaryDirectory(prefix="ai-engine-sim-") as tmp:
        logs = args.logs or Path(tmp)
        return asyncio.run(run(mode=args.mode, jobs=args.jobs, timeout_s=timeout_s,
                               gpu=args.gpu, generator=args.generator, logs=logs))


async def test_simulation_local(tmp_path: Path) -> None:
    """The local mode end to end: 12 requests, every job as expected."""
    code = await run(mode="local", jobs=12, timeout_s=120, logs=tmp_path)
    assert code == 0


if __name__ == "__main__":
    sys.exit(main())
