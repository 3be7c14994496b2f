"""The job store interface, and its embedded SQLite implementation.

The store is the durable truth of every job and of every pending webhook
delivery (the outbox). In embedded mode it is also the queue: queued rows are
claimed in submission order by the executors of this process.

SQLite runs in WAL mode with ``synchronous=NORMAL``: every accepted job is
committed before the 202 goes out, and survives a crash of the process
(a power loss may drop the last few hundred milliseconds of commits).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ai_engine.errors import EngineError
from ai_engine.jobs.fairness import retry_after_s, session_cap
from ai_engine.jobs.model import Job, JobStatus, Stage, utcnow

T = TypeVar("T")


class Conflict(Exception):
    """Same idempotency key, different request body."""

    def __init__(self, existing: Job) -> None:
        super().__init__(f"job {existing.job_id} exists for this key with another body")
        self.existing = existing


class QueueFull(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__("queue is full")
        self.retry_after_s = retry_after_s


class StoreUnavailable(EngineError):
    """The shared store (Redis) cannot be reached; the caller may try again shortly."""

    code = "store.unavailable"
    retryable = True


@dataclass
class Delivery:
    """One webhook event to deliver; ``webhook_id`` stays the same across retries."""

    webhook_id: str
    job_id: str
    url: str
    event_type: str
    payload: str
    created_at: float
    next_attempt_at: float
    attempts: int = 0
    status: str = "pending"  # pending | delivered | gone | expired
    last_error: str | None = None
    id: int | None = None


DeliveriesFor = Callable[[Job], list[Delivery]]  # the webhook deliveries of a job's end


class JobStore(Protocol):
    async def submit(self, job: Job, *, max_queue: int) -> tuple[Job, bool]: ...
    async def get(self, job_id: str) -> Job | None: ...
    async def claim(self) -> Job | None: ...
    async def save(self, job: Job) -> None: ...
    async def finish(self, job: Job, deliveries: list[Delivery]) -> None: ...
    async def requeue(self, job: Job, *, delay_s: float) -> None: ...
    async def cancel_queued(self, job_id: str, *, deliveries: DeliveriesFor | None = None
                            ) -> Job | None: ...
    async def request_cancel(self, job_id: str) -> Job | None: ...
    async def recover(self, *, max_attempts: int) -> tuple[list[Job], list[Job]]: ...
    def release(self, job_id: str) -> None: ...
    async def queued_count(self) -> int: ...
    async def add_deliveries(self, deliveries: list[Delivery]) -> None: ...
    async def due_deliveries(self, *, now: float, limit: int) -> list[Delivery]: ...
    async def update_delivery(self, delivery: Delivery) -> None: ...
    async def next_delivery_at(self) -> float | None: ...
    async def stop_deliveries_to(self, url: str) -> int: ...
    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    session_id TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    not_before REAL NOT NULL DEFAULT 0,
    body TEXT NOT NULL,
    request TEXT NOT NULL DEFAULT '',
    UNIQUE (session_id, asset_id)
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries (job_id, status, id);
CREATE TABLE IF NOT EXISTS gone_urls (url TEXT PRIMARY KEY, at REAL NOT NULL);
"""

# A receiver that answered 410 gets no events for this long (then it is tried again,
# in case the 410 was a mistake on its side).
GONE_FOR_S = 24 * 3600.0


def job_to_json(job: Job) -> str:
    data: dict[str, Any] = {
        "job_id": job.job_id, "session_id": job.session_id, "asset_id": job.asset_id,
        "request": job.request, "request_hash": job.request_hash, "generator": job.generator,
        "seed": job.seed, "status": job.status.value,
        "stage": job.stage.value if job.stage else None, "progress": job.progress,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "assets": job.assets, "thumbnail": job.thumbnail, "intermediates": job.intermediates,
        "error": job.error, "timings": job.timings, "attempts": job.attempts,
        "cancel_requested": job.cancel_requested, "not_before": job.not_before,
    }
    return json.dumps(data, separators=(",", ":"))


def job_from_json(text: str) -> Job:
    data = json.loads(text)
    parse = datetime.fromisoformat
    return Job(
        job_id=data["job_id"], session_id=data["session_id"], asset_id=data["asset_id"],
        request=data["request"], request_hash=data["request_hash"],
        generator=data["generator"], seed=data["seed"], status=JobStatus(data["status"]),
        stage=Stage(data["stage"]) if data["stage"] else None, progress=data["progress"],
        created_at=parse(data["created_at"]),
        started_at=parse(data["started_at"]) if data["started_at"] else None,
        finished_at=parse(data["finished_at"]) if data["finished_at"] else None,
        assets=data["assets"], thumbnail=data["thumbnail"],
        intermediates=data.get("intermediates") or {}, error=data["error"],
        timings=data["timings"], attempts=data["attempts"],
        cancel_requested=data["cancel_requested"], not_before=data.get("not_before", 0.0),
    )


def _body(job: Job) -> str:
    """The job record without its request: the request (an inline image may be megabytes)
    is written once at submission, in its own column, not at every save."""
    return job_to_json(dataclasses.replace(job, request={}))


def _from_row(row: tuple[str, str] | Any) -> Job:
    job = job_from_json(row[0])
    if row[1]:
        job.request = json.loads(row[1])
    return job


class SqliteJobStore:
    """Embedded store: one SQLite file in WAL mode, one connection on its own thread.

    Each public method is one hop to that thread, where it runs its statements and
    commits; the event loop never waits on the disk.
    """

    def __init__(self, conn: sqlite3.Connection, thread: ThreadPoolExecutor, *,
                 session_share: float) -> None:
        self._conn = conn
        self._thread = thread
        self._queued = 0
        # fairness (ai_engine.jobs.fairness): queued jobs per session, and when each
        # session was last served, for round-robin dispatch across sessions
        self._session_share = session_share
        self._queued_by_session: Counter[str] = Counter()
        self._served_at: dict[str, int] = {}
        self._serves = 0

    @classmethod
    async def open(cls, path: Path, *, session_share: float = 1.0) -> SqliteJobStore:
        """Open (creating) the database at ``path``. ``session_share`` is the share of the
        queue limit one session may hold queued (1.0: no per-session cap)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
            if "request" not in columns:  # a database from before requests had their column
                conn.execute("ALTER TABLE jobs ADD COLUMN request TEXT NOT NULL DEFAULT ''")
            return conn

        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(thread, connect)
        store = cls(conn, thread, session_share=session_share)
        rows = await store._run(lambda c: c.execute(
            "SELECT session_id, COUNT(*) FROM jobs WHERE status='queued' GROUP BY session_id"
        ).fetchall())
        store._queued_by_session.update({session: count for session, count in rows})
        store._queued = sum(store._queued_by_session.values())
        return store

    def _count(self, session_id: str, delta: int) -> None:
        self._queued += delta
        self._queued_by_session[session_id] += delta
        if self._queued_by_session[session_id] <= 0:
            del self._queued_by_session[session_id]

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, fn, self._conn)

    async def close(self) -> None:
        await self._run(lambda c: c.close())
        self._thread.shutdown(wait=True)

    # -- jobs ---------------------------------------------------------------
    async def submit(self, job: Job, *, max_queue: int) -> tuple[Job, bool]:
        """Insert a new queued job, or return the existing one for its key.

        Returns ``(job, created)``; raises :class:`Conflict` when the key exists
        with another body, :class:`QueueFull` when the queue is at its limit.
        """
        body = _body(job)
        request = json.dumps(job.request, separators=(",", ":"))
        queued = self._queued
        full = queued >= max_queue or self._queued_by_session[job.session_id] >= session_cap(
            max_queue, self._session_share)

        def work(c: sqlite3.Connection) -> tuple[Any, bool]:
            row = c.execute("SELECT body, request FROM jobs WHERE session_id=? AND asset_id=?",
                            (job.session_id, job.asset_id)).fetchone()
            if row is not None:
                return row, False
            if full:
                return None, False
            c.execute("INSERT INTO jobs (job_id, session_id, asset_id, request_hash, status,"
                      " body, request) VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                      (job.job_id, job.session_id, job.asset_id, job.request_hash, body,
                       request))
            return None, True

        existing_body, created = await self._run(work)
        if created:
            self._count(job.session_id, +1)
            return job, True
        if existing_body is None:
            raise QueueFull(retry_after_s=retry_after_s(queued))
        existing = _from_row(existing_body)
        if existing.request_hash != job.request_hash:
            raise Conflict(existing)
        return existing, False

    async def get(self, job_id: str) -> Job | None:
        row = await self._run(lambda c: c.execute(
            "SELECT body, request FROM jobs WHERE job_id=?", (job_id,)).fetchone())
        return _from_row(row) if row else None

    async def claim(self) -> Job | None:
        """Take the next due queued job, mark it running and count the attempt.

        Sessions with due jobs take turns (the one served longest ago first); within a
        session, jobs go in submission order.
        """
        now = time.time()
        served_at = dict(self._served_at)

        def work(c: sqlite3.Connection) -> Job | None:
            heads = c.execute("SELECT session_id, MIN(seq) FROM jobs WHERE status='queued' AND"
                              " not_before<=? GROUP BY session_id", (now,)).fetchall()
            if not heads:
                return None
            _, seq = min(heads, key=lambda h: (served_at.get(h[0], -1), h[1]))
            row = c.execute("SELECT body, request FROM jobs WHERE seq=?", (seq,)).fetchone()
            job = _from_row(row)
            job.status = JobStatus.RUNNING
            job.attempts += 1
            job.started_at = job.started_at or utcnow()
            job.stage, job.progress = None, 0
            c.execute("UPDATE jobs SET status='running', body=? WHERE job_id=?",
                      (_body(job), job.job_id))
            return job

        job = await self._run(work)  # one thread: no other claimer in between
        if job is not None:
            self._count(job.session_id, -1)
            self._serves += 1
            self._served_at[job.session_id] = self._serves
            if job.session_id not in self._queued_by_session:
                # nothing left queued: forget the turn (an idle session comes back first)
                del self._served_at[job.session_id]
        return job

    async def save(self, job: Job) -> None:
        body = _body(job)
        await self._run(lambda c: _write(c, job, body))

    async def finish(self, job: Job, deliveries: list[Delivery]) -> None:
        """Write the terminal state and enqueue its webhook deliveries atomically."""
        body = _body(job)

        def work(c: sqlite3.Connection) -> None:
            with _transaction(c):
                _write(c, job, body)
                _insert_deliveries(c, deliveries)

        await self._run(work)

    async def requeue(self, job: Job, *, delay_s: float) -> None:
        job.status, job.stage, job.progress = JobStatus.QUEUED, None, 0
        job.not_before = time.time() + delay_s
        body = _body(job)
        await self._run(lambda c: _write(c, job, body, not_before=job.not_before))
        self._count(job.session_id, +1)

    async def cancel_queued(self, job_id: str, *, deliveries: DeliveriesFor | None = None
                            ) -> Job | None:
        """Cancel a job that is still queued, with its ``deliveries`` in the same
        transaction; returns it, or None if it is not queued."""
        def work(c: sqlite3.Connection) -> Job | None:
            row = c.execute("SELECT body, request FROM jobs WHERE job_id=? AND status='queued'",
                            (job_id,)).fetchone()
            if row is None:
                return None
            job = _from_row(row)
            job.status, job.finished_at, job.cancel_requested = (JobStatus.CANCELED, utcnow(),
                                                                 True)
            job.error = {"code": "job.canceled", "message": "canceled before it started"}
            with _transaction(c):
                c.execute("UPDATE jobs SET status='canceled', body=? WHERE job_id=?",
                          (_body(job), job_id))
                _insert_deliveries(c, deliveries(job) if deliveries else [])
            return job

        job = await self._run(work)
        if job is not None:
            self._count(job.session_id, -1)
        return job

    async def request_cancel(self, job_id: str) -> Job | None:
        """Flag a job that has not ended for cancellation; returns the job as stored."""
        def work(c: sqlite3.Connection) -> Any:
            c.execute("UPDATE jobs SET body=json_set(body, '$.cancel_requested', json('true'))"
                      " WHERE job_id=? AND status IN ('queued', 'running')", (job_id,))
            return c.execute("SELECT body, request FROM jobs WHERE job_id=?",
                             (job_id,)).fetchone()

        row = await self._run(work)  # one step on the store's thread: no lost update
        return _from_row(row) if row is not None else None

    def release(self, job_id: str) -> None:
        """The executor's task for a claimed job ended (nothing to do here: ``recover``
        requeues a job left running, at the next start)."""

    async def recover(self, *, max_attempts: int) -> tuple[list[Job], list[Job]]:
        """At start: requeue jobs left running by a dead process.

        Returns ``(requeued, exhausted)``; exhausted jobs used all their attempts
        and are left running for the caller to fail (with their webhook).
        """
        rows = await self._run(lambda c: c.execute(
            "SELECT body, request FROM jobs WHERE status='running'").fetchall())
        requeued, exhausted = [], []
        for row in rows:
            job = _from_row(row)
            if job.attempts >= max_attempts:
                exhausted.append(job)
            else:
                await self.requeue(job, delay_s=0)
                requeued.append(job)
        return requeued, exhausted

    async def queued_count(self) -> int:
        return self._queued

    # -- webhook outbox -----------------------------------------------------
    async def add_deliveries(self, deliveries: list[Delivery]) -> None:
        if deliveries:
            await self._run(lambda c: _insert_deliveries(c, deliveries))

    async def due_deliveries(self, *, now: float, limit: int) -> list[Delivery]:
        """Pending deliveries due by ``now``: the oldest pending one of each job only, so a
        job's events reach the receiver in order."""
        rows = await self._run(lambda c: c.execute(
            "SELECT id, webhook_id, job_id, url, event_type, payload, created_at,"
            " next_attempt_at, attempts, status, last_error FROM deliveries"
            " WHERE status='pending' AND next_attempt_at<=? AND id=(SELECT MIN(id) FROM"
            " deliveries AS d2 WHERE d2.job_id=deliveries.job_id AND d2.status='pending')"
            " ORDER BY next_attempt_at LIMIT ?", (now, limit)).fetchall())
        return [Delivery(id=r[0], webhook_id=r[1], job_id=r[2], url=r[3], event_type=r[4],
                         payload=r[5], created_at=r[6], next_attempt_at=r[7], attempts=r[8],
                         status=r[9], last_error=r[10]) for r in rows]

    async def next_delivery_at(self) -> float | None:
        row = await self._run(lambda c: c.execute(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE status='pending'").fetchone())
        return float(row[0]) if row and row[0] is not None else None

    async def update_delivery(self, delivery: Delivery) -> None:
        d = delivery
        await self._run(lambda c: c.execute(
            "UPDATE deliveries SET attempts=?, next_attempt_at=?, status=?, last_error=?"
            " WHERE id=?", (d.attempts, d.next_attempt_at, d.status, d.last_error, d.id)))

    async def stop_deliveries_to(self, url: str) -> int:
        """The receiver answered 410: stop every pending delivery to ``url``, and new
        ones for a while (``GONE_FOR_S``)."""
        def work(c: sqlite3.Connection) -> int:
            with _transaction(c):
                c.execute("INSERT OR REPLACE INTO gone_urls (url, at) VALUES (?, ?)",
                          (url, time.time()))
                cur = c.execute("UPDATE deliveries SET status='gone', last_error='receiver "
                                "answered 410' WHERE url=? AND status='pending'", (url,))
                return int(cur.rowcount)

        return await self._run(work)


def _write(c: sqlite3.Connection, job: Job, body: str, *,
           not_before: float | None = None) -> None:
    """Store ``job`` (serialised as ``body``), keeping a cancellation requested meanwhile:
    the writer's copy may predate it, and a cancel must never be lost."""
    row = c.execute("SELECT json_extract(body, '$.cancel_requested') FROM jobs WHERE job_id=?",
                    (job.job_id,)).fetchone()
    if not_before is None:
        c.execute("UPDATE jobs SET status=?, body=? WHERE job_id=?",
                  (job.status.value, body, job.job_id))
    else:
        c.execute("UPDATE jobs SET status=?, not_before=?, body=? WHERE job_id=?",
                  (job.status.value, not_before, body, job.job_id))
    if row is not None and row[0] and not job.cancel_requested:
        job.cancel_requested = True
        c.execute("UPDATE jobs SET body=json_set(body, '$.cancel_requested', json('true'))"
                  " WHERE job_id=?", (job.job_id,))


@contextlib.contextmanager
def _transaction(c: sqlite3.Connection) -> Iterator[None]:
    c.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        c.execute("ROLLBACK")
        raise
    c.execute("COMMIT")


def _insert_deliveries(c: sqlite3.Connection, deliveries: list[Delivery]) -> None:
    for d in deliveries:
        gone = c.execute("SELECT 1 FROM gone_urls WHERE url=? AND at>?",
                         (d.url, time.time() - GONE_FOR_S)).fetchone()
        if gone is not None:
            d.status, d.last_error = "gone", "receiver answered 410 earlier"
        cur = c.execute(
            "INSERT INTO deliveries (webhook_id, job_id, url, event_type, payload,"
            " created_at, next_attempt_at, attempts, status) VALUES (?,?,?,?,?,?,?,?,?)",
            (d.webhook_id, d.job_id, d.url, d.event_type, d.payload, d.created_at,
             d.next_attempt_at, d.attempts, d.status))
        d.id = cur.lastrowid
