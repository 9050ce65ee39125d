"""The courier: a worker's webhook deliveries run on a few background threads, never on its image slot.

Why threads and not a second queue and pool: a worker is one solo-pool process per device (CUDA and
fork do not mix), so a separate Celery pool would mean a second process per worker to deploy and
watch. Deliveries only wait on sockets: `WEBHOOK_THREADS` threads, each attempt bounded by the hard
`WEBHOOK_DEADLINE`, deliver at least threads / deadline attempts per second whatever the receivers
do, and the image slot only hands a job id over. The `sdq.webhook` task returns at once; a failed
attempt is sent again as a new task message after Celery's exponential backoff (1, 2, 4, ... s,
full jitter, at most `WEBHOOK_BACKOFF_MAX`), up to `WEBHOOK_MAX_RETRIES` times. When
`WEBHOOK_BACKLOG` deliveries already wait, the task raises `WebhookFailed` and Celery retries it
later. An attempt in flight when its worker process dies is lost (its message was acknowledged at
hand-over); the window is one deadline long.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from celery.utils.time import get_exponential_backoff_interval

from sdq import contract, defaults
from sdq.exceptions import WebhookFailed

log = logging.getLogger(__name__)


class Courier:
    """Runs `deliver(job_id, attempt)` on background threads; schedules the next attempt when it raises
    `WebhookFailed`."""

    def __init__(self, celery, deliver: Callable[[str, int], None], threads: int = defaults.WEBHOOK_THREADS,
                 backlog: int = defaults.WEBHOOK_BACKLOG, max_retries: int = defaults.WEBHOOK_MAX_RETRIES,
                 backoff_max: int = defaults.WEBHOOK_BACKOFF_MAX) -> None:
        if threads < 1 or backlog < 0:
            raise ValueError(f"courier needs threads >= 1 and backlog >= 0, got {threads} and {backlog}")
        self.celery, self.deliver = celery, deliver
        self.max_retries, self.backoff_max = max_retries, backoff_max
        self._slots = threading.BoundedSemaphore(threads + backlog)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sdq-webhook")

    def submit(self, job_id: str, attempt: int) -> None:
        """Hand one attempt over (returns at once); raises `WebhookFailed` when the backlog is full."""
        if not self._slots.acquire(blocking=False):
            raise WebhookFailed("webhook courier is full")
        try:
            self._pool.submit(self._run, job_id, attempt)
        except RuntimeError:  # shutting down: the task is retried elsewhere
            self._slots.release()
            raise WebhookFailed("worker is stopping") from None

    def _run(self, job_id: str, attempt: int) -> None:
        try:
            self.deliver(job_id, attempt)
        except WebhookFailed:
            self._again(job_id, attempt)
        except Exception:  # noqa: BLE001 - a bug or Redis down: logged, the thread lives on
            log.exception("webhook for job %s: attempt %d crashed", job_id, attempt)
            self._again(job_id, attempt)
        finally:
            self._slots.release()

    def _again(self, job_id: str, attempt: int) -> None:
        if attempt > self.max_retries:
            log.warning("webhook for job %s given up after %d attempts", job_id, attempt)
            return
        delay = get_exponential_backoff_interval(1, attempt - 1, self.backoff_max, full_jitter=True)
        try:
            self.celery.send_task(contract.TASK_WEBHOOK, kwargs={"job_id": job_id, "attempt": attempt + 1},
                                  queue=contract.CONTROL_QUEUE, countdown=delay)
        except Exception:  # noqa: BLE001 - broker down: this delivery is lost, say so
            log.exception("webhook for job %s: could not schedule attempt %d", job_id, attempt + 1)

    def shutdown(self) -> None:
        """Stop taking deliveries; attempts in flight end by their deadline."""
        self._pool.shutdown(wait=False, cancel_futures=True)
