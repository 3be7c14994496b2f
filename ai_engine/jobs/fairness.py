"""Back-pressure and fairness between callers.

Two rules, enforced by both stores (atomically in Redis by
:mod:`ai_engine.jobs.redis_store`; on the store's one thread by the embedded
:class:`~ai_engine.jobs.store.SqliteJobStore`):

1. **Admission.** At most ``MAX_QUEUE`` jobs wait in the whole queue, and at most
   ``session_cap(MAX_QUEUE, SESSION_QUEUE_SHARE)`` of them belong to one session
   (half by default). Past either limit a submission answers ``429`` with a
   ``Retry-After``. The per-session cap is what keeps one caller's burst from
   filling the queue and locking every other caller out at the door.
2. **Dispatch.** Each session has its own FIFO sub-queue; workers take jobs from
   the sessions with waiting jobs in round-robin order. A caller with one job
   waits for at most one job of every other waiting session, however many those
   sessions queued, rather than behind the whole backlog as in one FIFO queue.

Round-robin per session was chosen over a cap alone because a cap bounds how long
the queue is, not who goes first: with a FIFO a small caller still waits behind
the big caller's whole (capped) backlog. A retried job goes back to the front of
its own session's sub-queue, so a retry is not pushed behind that session's later
jobs, and it cannot jump ahead of other sessions either.
"""

from __future__ import annotations

import math


def session_cap(max_queue: int, share: float) -> int:
    """How many queued jobs one session may hold: ``share`` of ``max_queue``, at least 1."""
    if share >= 1:
        return max_queue
    return max(1, math.ceil(max_queue * max(0.0, share)))


def retry_after_s(queued: int) -> int:
    """``Retry-After`` for a refused submission: longer when more jobs are waiting."""
    return max(1, min(60, queued // 100))
