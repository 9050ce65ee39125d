"""The reaper: items `running` on a worker that left the fleet go back to the queue, and ended jobs
still waiting for their finalisation get their finalize task sent again.

Every worker runs `Reaper.tick` from its heartbeat thread; a short Redis lock lets one worker
sweep per interval. A dead worker's message also comes back by itself (the broker's visibility
timeout); whichever comes first wins: the reaper re-queues the items as a new attempt, so the
restored old message is dropped, and a redelivered message keeps its items off the reaper
(their worker is live again).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from sdq import defaults
from sdq.celery_app import publish_member, send_chunk
from sdq.state.store import JobStore

log = logging.getLogger(__name__)


class Reaper:
    """Periodic recovery sweeps, run by whichever worker gets the lock."""

    def __init__(self, jobs: JobStore, celery, finalize: Callable[[str], None],
                 interval: float = defaults.REAPER_INTERVAL, finalize_resend: float = defaults.FINALIZE_RESEND) -> None:
        self.jobs, self.celery, self.finalize = jobs, celery, finalize
        self.interval, self.finalize_resend = interval, finalize_resend
        self._next = 0.0

    def tick(self) -> None:
        """Sweep if the interval passed and no other worker swept meanwhile."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        lock_ms = max(100, int(self.interval * 1000 * 0.9))
        if not self.jobs.reaper_turn(lock_ms):
            return
        self.reap()
        self.end_stale()
        for job_id in self.jobs.finalize_due(self.finalize_resend):
            log.warning("job %s ended but is not finalised yet: sending its finalize task again", job_id)
            self.finalize(job_id)

    def reap(self) -> int:
        """Re-queue the running items of every worker that left the fleet; returns how many. Each
        step records their messages in the outbox, then publishes them: a sweep killed between the
        two leaves them to the next heartbeat after the outbox lease."""
        live = {w.name for w in self.jobs.live_workers()}
        total = 0
        for worker in self.jobs.running_workers():
            if worker in live:
                continue

            def publish(job_id: str, pairs: list[tuple[int, int]], member: str, worker: str = worker) -> None:
                log.warning("worker %s left the fleet running items %s of job %s: queued again",
                            worker, [i for i, _ in pairs], job_id)
                publish_member(self.jobs, self.jobs.outbox, member, lambda chunk: send_chunk(self.celery, chunk))

            while reaped := self.jobs.reap_and_publish(worker, publish):
                total += len(reaped)
        return total


    def end_stale(self) -> int:
        """Cancel jobs still unfinished `UNFINISHED_JOB_MAX_AGE` after submit (a day before their records
        expire), so their items leave the owner's queued count; a job whose records are gone already
        leaves the active set. Returns how many were ended."""
        ended = 0
        for job_id in self.jobs.unfinished_since(time.time() - defaults.UNFINISHED_JOB_MAX_AGE):
            state, done = self.jobs.cancel(job_id)
            if state is None:
                self.jobs.drop_active(job_id)
                continue
            log.warning("job %s still unfinished %d days after submit: cancelled", job_id,
                        defaults.UNFINISHED_JOB_MAX_AGE // 86400)
            ended += 1
            if done:
                self.finalize(job_id)
        return ended


def safe_tick(reaper: Reaper | None) -> None:
    """`reaper.tick()`, logging (not raising) a Redis or broker error (kombu's `OperationalError` too):
    the next beat tries again, and what it re-queued is in the outbox."""
    if reaper is None:
        return
    try:
        reaper.tick()
    except Exception:  # noqa: BLE001 - see above
        log.warning("reaper sweep failed", exc_info=True)
