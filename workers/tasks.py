"""Celery task definitions. They hand work to the process's Runner (loaded once at start)."""
from __future__ import annotations

import logging
from typing import Callable

from celery import Celery
from celery.exceptions import Reject

from sdq import contract
from sdq.celery_app import TASK_FINALIZE

log = logging.getLogger(__name__)

FINALIZE_BACKOFF_MAX = 60
"""Longest pause, seconds, between attempts of a job's finalisation."""


def register(celery: Celery, runner, on_webhook=None, on_finalize: Callable[[str], None] | None = None) -> None:
    """Register the sdq tasks on `celery`, bound to `runner`."""

    @celery.task(name=contract.TASK_GENERATE, acks_late=True, reject_on_worker_lost=True)
    def generate(chunk: dict) -> None:
        # Celery acknowledges a task that raised: an exception escaping the chunk would lose its
        # message. Any error here is an infrastructure one (item errors never escape the runner),
        # so the message goes back to its queue instead; each delivery counts an attempt.
        try:
            runner.run_chunk(chunk)
        except Exception as exc:  # noqa: BLE001 - see above
            log.warning("chunk of job %s delivered again after %s: %s", chunk.get("job"), type(exc).__name__, exc)
            raise Reject(exc, requeue=True) from exc

    @celery.task(name=contract.TASK_WEBHOOK, bind=True, acks_late=True, max_retries=8)
    def webhook(self, job_id: str) -> None:
        if on_webhook is not None:
            on_webhook(self, job_id)

    @celery.task(name=TASK_FINALIZE, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
    def finalize(self, job_id: str) -> None:
        # idempotent (`sdq.lifecycle.finalize_job`): retried with backoff until it succeeds
        if on_finalize is None:
            return
        try:
            on_finalize(job_id)
        except Exception as exc:  # noqa: BLE001 - storage or Redis down: later
            log.warning("finalisation of job %s failed (%s); retrying", job_id, exc)
            raise self.retry(exc=exc, countdown=min(FINALIZE_BACKOFF_MAX, 2 ** self.request.retries))
