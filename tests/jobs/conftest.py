"""Fixtures for the job stores: the same tests run on SQLite and on a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ai_engine.jobs.model import Job, new_job_id, request_fingerprint
from ai_engine.jobs.redis_store import RedisJobStore
from ai_engine.jobs.store import JobStore, SqliteJobStore
from tests.servers.redis import RedisServer, redis_server  # noqa: F401

LEASE_S = 0.4  # short, so that tests see an abandoned attempt taken over quickly


class Stores:
    """Opens stores of one kind on one database; ``reopen`` stands for a new process."""

    def __init__(self, kind: str, tmp_path: Path, server: RedisServer | None) -> None:
        self.kind = kind
        self.path = tmp_path / "jobs.sqlite3"
        self.server = server
        self.prefix = "t" + uuid.uuid4().hex[:10]
        self.opened: list[JobStore] = []

    async def open(self, **options: Any) -> JobStore:
        store: JobStore
        if self.kind == "sqlite":
            store = await SqliteJobStore.open(
                self.path, session_share=options.get("session_share", 0.5))
        else:
            assert self.server is not None
            values: dict[str, Any] = {"prefix": self.prefix, "lease_s": LEASE_S,
                                      "max_attempts": 3, **options}
            store = await RedisJobStore.open(self.server.url, **values)
        self.opened.append(store)
        return store

    async def close(self, store: JobStore) -> None:
        self.opened.remove(store)
        await store.close()

    async def close_all(self) -> None:
        for store in list(self.opened):
            await self.close(store)


@pytest.fixture(params=["sqlite", "redis"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    opened = Stores(request.param, tmp_path, server)
    yield opened
    await opened.close_all()


@pytest.fixture
async def redis_stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    opened = Stores("redis", tmp_path, request.getfixturevalue("redis_server"))
    yield opened
    await opened.close_all()


def make_job(session_id: str = "s", asset_id: str | None = None, *,
             webhook_url: str | None = "http://hooks.test/h", **request: Any) -> Job:
    asset_id = asset_id or uuid.uuid4().hex[:8]
    body = {"session_id": session_id, "asset_id": asset_id,
            "image_url": "http://images.test/a.png", "webhook_url": webhook_url,
            "webhook_events": ["started", "completed"], **request}
    return Job(job_id=new_job_id(), session_id=session_id, asset_id=asset_id, request=body,
               request_hash=request_fingerprint(body), generator="silhouette", seed=7)
