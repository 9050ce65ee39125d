"""The Celery tasks' retry options, run eagerly (no broker): Celery itself retries a failed webhook."""
from __future__ import annotations

import pytest
from celery import Celery

from sdq import contract, defaults
from sdq.celery_app import TASK_FINALIZE
from sdq.exceptions import WebhookFailed
from workers.tasks import register


def _app(on_webhook=None, on_finalize=None) -> Celery:
    app = Celery("unit", broker="memory://", set_as_current=False)
    app.conf.task_always_eager = True
    register(app, runner=None, on_webhook=on_webhook, on_finalize=on_finalize)
    return app


def test_a_failed_webhook_is_retried_by_celery_with_the_attempt_number():
    attempts = []

    def deliver(job_id: str, attempt: int) -> None:
        attempts.append((job_id, attempt))
        if attempt < 3:
            raise WebhookFailed("HTTP 500")

    _app(on_webhook=deliver).tasks[contract.TASK_WEBHOOK].apply(args=("j1",)).get()
    assert attempts == [("j1", 1), ("j1", 2), ("j1", 3)]


def test_webhook_retries_are_bounded_and_backed_off():
    attempts = []

    def deliver(job_id: str, attempt: int) -> None:
        attempts.append(attempt)
        raise WebhookFailed("HTTP 503")

    task = _app(on_webhook=deliver).tasks[contract.TASK_WEBHOOK]
    assert (task.retry_backoff, task.retry_backoff_max, task.retry_jitter) == (1, defaults.WEBHOOK_BACKOFF_MAX, True)
    with pytest.raises(WebhookFailed):
        task.apply(args=("j2",)).get()
    assert attempts == list(range(1, defaults.WEBHOOK_MAX_RETRIES + 2))


def test_other_webhook_errors_are_not_retried():
    attempts = []

    def deliver(job_id: str, attempt: int) -> None:
        attempts.append(attempt)
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        _app(on_webhook=deliver).tasks[contract.TASK_WEBHOOK].apply(args=("j3",)).get()
    assert attempts == [1]


def test_finalisation_is_retried_until_it_succeeds():
    calls = []

    def finalize(job_id: str) -> None:
        calls.append(job_id)
        if len(calls) < 4:
            raise ConnectionError("S3 down")

    _app(on_finalize=finalize).tasks[TASK_FINALIZE].apply(args=("j4",)).get()
    assert calls == ["j4"] * 4
