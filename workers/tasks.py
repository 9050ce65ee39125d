"""Celery task definitions. They hand work to the process's Runner (loaded once at start)."""
from __future__ import annotations

import logging
from typing import Callable, Protocol

from celery import Celery
from celery.exceptions import Reject

from sdq import contract, defaults
from sdq.celery_app import TASK_FINALIZE
from sdq.exceptions import BadMessage, WebhookFailed
from sdq.records import Chunk

log = logging.getLogger(__name__)


class ChunkRunner(Protocol):
    """What runs a chunk message (`workers.running.runner.Runner`)."""

    def run_chunk(self, chunk: Chunk) -> None:
        """Make the chunk's items; raise when its message must be delivered again."""


def register(celery: Celery, runner: ChunkRunner | None, on_webhook: Callable[[str, int], None] | None = None,
             on_finalize: Callable[[str], None] | None = None) -> None:
    """Register the sdq tasks on `celery`, bound to `runner` (`shared=False`: they belong to this app only)."""

    @celery.task(name=contract.TASK_GENERATE, shared=False, acks_late=True, reject_on_worker_lost=True)
    def generate(chunk: dict) -> None:
        # Celery acknowledges a task that raised: an exception escaping the chunk would lose its
        # message. Any error here is an infrastructure one (item errors never escape the runner),
        # so the message goes back to its queue instead; each delivery counts an attempt.
        try:
            parsed = Chunk.from_message(chunk)
        except BadMessage as exc:  # delivered again, it would fail the same way every time
            log.error("dropping a task message that is not an sdq chunk: %s", exc)
            return
        try:
            runner.run_chunk(parsed)
        except Exception as exc:  # noqa: BLE001 - see above
            log.warning("chunk of job %s delivered again after %s: %s", parsed.job, type(exc).__name__, exc)
            raise Reject(exc, requeue=True) from exc

    # Celery retries both with its own exponential backoff (1, 2, 4, ... s, full jitter, capped).
    @celery.task(name=contract.TASK_WEBHOOK, shared=False, bind=True, acks_late=True,
                 autoretry_for=(WebhookFailed,), retry_backoff=1, retry_backoff_max=defaults.WEBHOOK_BACKOFF_MAX,
                 retry_jitter=True, max_retries=defaults.WEBHOOK_MAX_RETRIES)
    def webhook(self, job_id: str, attempt: int | None = None) -> None:
        # hands the attempt to the courier (`workers.finishing.courier`), which queues it per tenant or sends it back
        if on_webhook is not None:
            on_webhook(job_id, attempt or self.request.retries + 1)

    @celery.task(name=TASK_FINALIZE, shared=False, bind=True, acks_late=True, reject_on_worker_lost=True,
                 autoretry_for=(Exception,), retry_backoff=1, retry_backoff_max=defaults.FINALIZE_BACKOFF_MAX,
                 retry_jitter=True, max_retries=None)
    def finalize(self, job_id: str) -> None:
        # idempotent (`workers.finishing.finalize.finalize_job`): retried until it succeeds
        if on_finalize is None:
            return
        try:
            on_finalize(job_id)
        except Exception as exc:  # noqa: BLE001 - storage or Redis down: Celery retries it later
            log.warning("finalisation of job %s failed (%s); retrying", job_id, exc)
            raise
