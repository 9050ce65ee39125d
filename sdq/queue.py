"""The Celery application both sides use: the producer sends tasks by name, workers run them."""
from __future__ import annotations

from celery import Celery

from sdq import defaults


def celery_config(redis_url: str) -> dict:
    """Celery settings for a Redis broker carrying long, expensive tasks."""
    return dict(
        broker_url=redis_url,
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": defaults.VISIBILITY_TIMEOUT,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
        },
        task_default_queue="sdq.control",
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )


def make_celery(redis_url: str) -> Celery:
    """A Celery app configured for sdq on `redis_url` (no tasks registered)."""
    app = Celery("sdq", set_as_current=False)
    app.conf.update(celery_config(redis_url))
    return app
