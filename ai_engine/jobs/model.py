"""The job record and its state machine.

A job moves ``queued -> running -> succeeded | failed | canceled``; a running
job whose process died goes back to ``queued`` at recovery (its ``attempts``
counts each start). While running, ``stage`` names the current step of the
data path and ``progress`` is 0..100 over the whole job.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class Stage(StrEnum):
    FETCHING = "fetching"
    PREPROCESSING = "preprocessing"
    GENERATING = "generating"
    EXPORTING = "exporting"
    UPLOADING = "uploading"
    NOTIFYING = "notifying"


# Share of the whole job each stage accounts for in `progress` (sums to 100).
STAGE_WEIGHTS: dict[Stage, float] = {
    Stage.FETCHING: 5,
    Stage.PREPROCESSING: 10,
    Stage.GENERATING: 65,
    Stage.EXPORTING: 12,
    Stage.UPLOADING: 6,
    Stage.NOTIFYING: 2,
}


def overall_progress(stage: Stage, fraction: float) -> int:
    done = 0.0
    for name, weight in STAGE_WEIGHTS.items():
        if name == stage:
            return min(100, int(done + weight * max(0.0, min(1.0, fraction))))
        done += weight
    return 100


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    return ts.isoformat().replace("+00:00", "Z") if ts else None


class _RandomPool:
    """Bytes from the OS CSPRNG, read 4 KiB at a time.

    Each ``os.urandom`` call is a system call that costs tens of microseconds on
    some virtual machines; ids and seeds are drawn for every accepted job, so they
    come from a buffer (still cryptographically random, never reused).
    """

    def __init__(self) -> None:
        self._buf = b""
        self._lock = threading.Lock()

    def take(self, n: int) -> bytes:
        with self._lock:
            if len(self._buf) < n:
                self._buf = os.urandom(4096)
            out, self._buf = self._buf[:n], self._buf[n:]
            return out


_POOL = _RandomPool()


def new_job_id() -> str:
    return "job_" + _POOL.take(16).hex()


def new_message_id() -> str:
    return "msg_" + _POOL.take(16).hex()


def random_seed() -> int:
    """A random seed in ``[0, 2**31)``."""
    return int.from_bytes(_POOL.take(4), "big") & 0x7FFFFFFF


def request_fingerprint(request: dict[str, Any]) -> str:
    """Stable hash of a request body: same body -> same job, different -> 409."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Job:
    job_id: str
    session_id: str
    asset_id: str
    request: dict[str, Any]
    request_hash: str
    generator: str
    seed: int
    status: JobStatus = JobStatus.QUEUED
    stage: Stage | None = None
    progress: int = 0
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    assets: list[dict[str, Any]] = field(default_factory=list)
    thumbnail: dict[str, Any] | None = None
    intermediates: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    attempts: int = 0
    cancel_requested: bool = False
    not_before: float = 0.0  # epoch seconds; a retried job waits until then

    @property
    def webhook_url(self) -> str | None:
        url = self.request.get("webhook_url")
        return str(url) if url else None

    @property
    def webhook_events(self) -> list[str]:
        return list(self.request.get("webhook_events") or ["completed"])

    def public(self) -> dict[str, Any]:
        """The job as the API and webhooks show it (API.md)."""
        return {
            "job_id": self.job_id,
            "session_id": self.session_id,
            "asset_id": self.asset_id,
            "status": self.status.value,
            "stage": self.stage.value if self.stage else None,
            "progress": self.progress,
            "generator": self.generator,
            "seed": self.seed,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "assets": self.assets,
            "thumbnail": self.thumbnail,
            "intermediates": self.intermediates or None,
            "error": self.error,
            "timings": self.timings,
            "attempts": self.attempts,
        }
