"""test_docker_simulation.py: its checks catch what they claim to, and its CLI runs the stack.

The judging parts run against real peers on loopback (the webhook sink, an
image server standing in for S3); the last tests run the harness's local mode
from its command line, once passing and once with every job refused.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trimesh
from standardwebhooks.webhooks import Webhook

import test_docker_simulation as sim
from ai_engine.tools.webhook_sink import create_sink_app
from tests.servers.web import ImageServer, start_site

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(b"harness-test-secret-0123456789ab").decode()


def mesh_bytes(fmt: str) -> bytes:
    data = trimesh.creation.box().export(file_type=fmt)
    return data if isinstance(data, bytes) else data.encode()


def splat_ply(count: int) -> bytes:
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {count}\nproperty float x\nproperty float f_dc_0\n"
              "end_header\n").encode()
    return header + b"\0" * 8 * count


def spz(count: int) -> bytes:
    return gzip.compress(struct.pack("<4sIIBBBB", b"NGSP", 3, count, 0, 12, 0, 0))


@pytest.mark.parametrize("fmt", ["glb", "stl", "obj", "ply"])
def test_meshes_that_load_pass(fmt: str) -> None:
    assert sim.validate_asset(fmt, mesh_bytes(fmt)) is None


@pytest.mark.parametrize(("fmt", "data", "why"), [
    ("glb", b"", "empty"),
    ("glb", b"glTF\x02\x00\x00\x00garbage", "trimesh"),
    ("stl", b"solid empty\nendsolid empty\n", "without faces"),
    ("splat_ply", splat_ply(0), "3DGS"),
    ("splat_ply", mesh_bytes("ply"), "3DGS"),
    ("spz", b"NGSP", "gzip"),
    ("spz", spz(0), "SPZ"),
])
def test_broken_assets_are_caught(fmt: str, data: bytes, why: str) -> None:
    problem = sim.validate_asset(fmt, data)
    assert problem is not None and why in problem


def test_splats_that_parse_pass() -> None:
    assert sim.validate_asset("splat_ply", splat_ply(3)) is None
    assert sim.validate_asset("spz", spz(3)) is None


def test_batch_plan() -> None:
    stack = sim.Stack(api_url="http://a", api_token="t", webhook_secret=SECRET,
                      webhook_url="http://sink/hook", events_url="http://sink/events",
                      image_urls=["http://img/1.png", "http://img/2.png"],
                      bad_image_url="http://img/missing.png")
    planned = sim.plan_batch(stack, jobs=12, session_id="s")
    assert len(planned) == 12
    keys = [p.body["asset_id"] for p in planned]
    assert len(set(keys)) == 10
    duplicates = [p for p in planned if p.duplicate]
    assert len(duplicates) == 2 and all(
        d.body == next(p.body for p in planned if not p.duplicate
                       and p.body["asset_id"] == d.body["asset_id"]) for d in duplicates)
    assert [p.body["image_url"] for p in planned if p.expect == "failed"] == \
        ["http://img/missing.png"]
    assert {p.body["image_url"] for p in planned if p.expect == "succeeded"} == \
        set(stack.image_urls)
    trellis = sim.plan_batch(stack, jobs=4, session_id="s", generator="trellis")
    assert all(p.body.get("generator") == "trellis" and "glb" not in p.body["formats"]
               for p in trellis if p.expect == "succeeded")
    with pytest.raises(ValueError):
        sim.plan_batch(stack, jobs=3, session_id="s")


def event(job_id: str, kind: str, **data: Any) -> dict[str, Any]:
    return {"type": kind, "timestamp": datetime.now(tz=UTC).isoformat(),
            "data": {"job_id": job_id, "status": data.pop("status", "succeeded"),
                     "error": None, "assets": [], **data}}


@pytest.fixture
async def sink_url() -> AsyncIterator[str]:
    runner, url = await start_site(create_sink_app(SECRET))
    yield url
    await runner.cleanup()


async def deliver(http: aiohttp.ClientSession, url: str, payload: dict[str, Any], *,
                  webhook_id: str) -> None:
    body = json.dumps(payload)
    now = datetime.now(tz=UTC)
    headers = {"webhook-id": webhook_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(SECRET).sign(webhook_id, now, body)}
    async with http.post(f"{url}/hook", data=body, headers=headers) as resp:
        assert resp.status == 204


async def test_judging_catches_misses(sink_url: str) -> None:
    """Bad assets, a missing webhook, a wrong failure code and a missing started event."""
    images = await ImageServer().start()
    glb = mesh_bytes("glb")
    good = {"format": "glb", "url": images.add("good.glb", glb), "bytes": len(glb),
            "sha256": hashlib.sha256(glb).hexdigest()}
    corrupt = {**good, "url": images.add("corrupt.glb", glb[:-40])}
    stack = sim.Stack(api_url="http://unused", api_token="t", webhook_secret=SECRET,
                      webhook_url=f"{sink_url}/hook", events_url=f"{sink_url}/events",
                      image_urls=[], bad_image_url="")
    now = time.time()
    outcomes = {name: sim.Outcome(name, expect, now, job_id=f"job_{name}")
                for name, expect in [("ok", "succeeded"), ("corrupt", "succeeded"),
                                     ("silent", "succeeded"), ("wrongcode", "failed"),
                                     ("nostart", "succeeded")]}
    planned = [sim.Planned({"asset_id": name, "formats": ["glb"]}) for name in outcomes]
    planned[-1].body["webhook_events"] = ["started", "completed"]
    try:
        async with aiohttp.ClientSession() as http:
            await deliver(http, sink_url, event("job_ok", "asset.completed", assets=[good]),
                          webhook_id="m1")
            await deliver(http, sink_url, event("job_corrupt", "asset.completed",
                                                assets=[corrupt]), webhook_id="m2")
            await deliver(http, sink_url, event("job_wrongcode", "asset.failed", status="failed",
                                                error={"code": "imaging.no_object"}),
                          webhook_id="m3")
            await deliver(http, sink_url, event("job_nostart", "asset.completed", assets=[good]),
                          webhook_id="m4")
            rejected = await sim.collect_webhooks(http, stack, outcomes, timeout_s=1.0)
            await sim.judge(http, outcomes, planned)
    finally:
        await images.close()
    assert rejected == 0
    assert outcomes["ok"].ok and outcomes["ok"].nbytes == len(glb), outcomes["ok"].problems
    assert any("sha256" in p for p in outcomes["corrupt"].problems)
    assert outcomes["silent"].problems == ["no terminal webhook"]
    assert any("imaging.no_object" in p for p in outcomes["wrongcode"].problems)
    assert any("asset.started" in p for p in outcomes["nostart"].problems)
    table = sim.summary(outcomes, rejected=rejected)
    assert "5 jobs, 4 missed" in table and "MISS: no terminal webhook" in table


async def test_signatures_are_checked_again(sink_url: str) -> None:
    """An event the sink took is refused by the harness when its own secret disagrees."""
    other = "whsec_" + base64.b64encode(b"another-secret-0123456789abcdef0").decode()
    stack = sim.Stack(api_url="http://unused", api_token="t", webhook_secret=other,
                      webhook_url="", events_url=f"{sink_url}/events", image_urls=[],
                      bad_image_url="")
    outcomes = {"a": sim.Outcome("a", "succeeded", time.time(), job_id="job_a")}
    async with aiohttp.ClientSession() as http:
        await deliver(http, sink_url, event("job_a", "asset.completed"), webhook_id="m1")
        await sim.collect_webhooks(http, stack, outcomes, timeout_s=0.5)
    assert outcomes["a"].events == []
    assert any("bad signature" in p for p in outcomes["a"].problems)


def test_stack_settings_need_a_shared_secret() -> None:
    config = {"services": {
        "ai-engine": {"environment": {"AI_ENGINE_API_TOKENS": "t1,t2",
                                      "AI_ENGINE_WEBHOOK_SECRET": SECRET}},
        "webhook-sink": {"environment": {"AI_ENGINE_WEBHOOK_SECRET": "whsec_other"}}}}
    with pytest.raises(sim.StackError, match="WEBHOOK_SECRET"):
        sim.stack_settings(config)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "test_docker_simulation.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)


def test_cli_local_mode_passes() -> None:
    result = run_cli("--mode", "local", "--jobs", "4")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(ln.startswith("bad-url ") and "fetch.http_status" in ln and ln.endswith("ok")
               for ln in lines)
    assert "3 jobs, 0 missed, 0 webhooks rejected by the sink" in result.stdout
    assert lines[-1].startswith("PASS")


def test_cli_exits_1_on_misses() -> None:
    """Every job asks for a generator this stack lacks: each is refused, each is a miss."""
    result = run_cli("--mode", "local", "--jobs", "4", "--generator", "trellis")
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert "2 missed" in result.stdout and "MISS: POST answered 422" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("FAIL")
