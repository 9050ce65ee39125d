"""Celery task definitions. They hand work to the process's Runner (loaded once at start)."""
from __future__ import annotations

from celery import Celery

from sdq import contract


def register(celery: Celery, runner, on_webhook=None) -> None:
    """Register the sdq tasks on `celery`, bound to `runner`."""

    @celery.task(name=contract.TASK_GENERATE, acks_late=True, reject_on_worker_lost=True)
    def generate(chunk: dict) -> None:
        runner.run_chunk(chunk)

    @celery.task(name=contract.TASK_WEBHOOK, bind=True, acks_late=True, max_retries=8)
    def webhook(self, job_id: str) -> None:
        if on_webhook is not None:
            on_webhook(self, job_id)
