"""Which job store a process uses: embedded SQLite, or Redis when ``QUEUE_URL`` is set."""

from __future__ import annotations

from collections.abc import Callable

from ai_engine.config import Settings
from ai_engine.jobs.events import JobEvents
from ai_engine.jobs.store import JobStore, SqliteJobStore


def new_job_events(settings: Settings) -> JobEvents:
    """In-process job events; with a shared queue they also carry other processes' changes."""
    if settings.queue_url:
        from ai_engine.jobs.shared_events import SharedJobEvents

        return SharedJobEvents()
    return JobEvents()


async def open_job_store(settings: Settings, *, events: JobEvents,
                         on_cancel: Callable[[str], None] | None = None,
                         on_wake: Callable[[], None] | None = None) -> JobStore:
    """Open the configured store. ``on_cancel(job_id)`` and ``on_wake()`` let other
    processes stop a job running here and wake idle executors (shared queue only)."""
    if not settings.queue_url:
        return await SqliteJobStore.open(settings.db_path,
                                         session_share=settings.session_queue_share)
    from ai_engine.jobs.redis_store import RedisJobStore

    return await RedisJobStore.open(
        settings.queue_url, prefix=settings.queue_prefix, lease_s=settings.queue_lease_s,
        max_attempts=settings.max_attempts, session_share=settings.session_queue_share,
        retention_s=settings.job_retention_s,
        # long enough for one attempt (timeout) even when the deliverer's slots are busy
        delivery_lease_s=max(60.0, 4 * settings.webhook_timeout_s),
        events=events, on_cancel=on_cancel, on_wake=on_wake)
