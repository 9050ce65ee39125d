"""Webhook delivery for finished jobs (runs as a Celery task on any worker).

The body is ``{"event": "job.finished", "job": {...summary...}}``; headers carry the HMAC signature
described in `sdq.webhooks`. Connection errors, 5xx, 408 and 429 answers are retried with
exponential backoff (1, 2, 4, ... s, at most 5 min, `max_retries` attempts); other 4xx answers are
final. The target is checked again before every attempt, so a host that resolves to a private
address after submit is still refused.
"""
from __future__ import annotations

import json
import logging
import time

import requests

from sdq.config import Settings
from sdq.exceptions import InvalidInput
from sdq.jobstore import JobStore
from sdq.webhooks import EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, check_webhook_url, sign

log = logging.getLogger(__name__)

RETRY_STATUSES = (408, 429)
"""4xx answers worth retrying; every 5xx is retried too."""

SUMMARY_FIELDS = ("id", "state", "created_at", "started_at", "finished_at", "model", "pipeline", "priority",
                  "n_items", "counts", "seed", "manifest_key", "grid_key")


def payload(job: dict) -> bytes:
    """The webhook body for a finished job."""
    return json.dumps({"event": "job.finished", "job": {k: job.get(k) for k in SUMMARY_FIELDS}}).encode()


def deliver_webhook(task, jobs: JobStore, settings: Settings, job_id: str) -> None:
    """POST the job summary to its webhook_url; retry with exponential backoff on failure."""
    job = jobs.get(job_id)
    if job is None or not job.get("webhook_url"):
        return
    url = job["webhook_url"]
    try:
        check_webhook_url(url, settings.webhook_allow_private)
    except InvalidInput as exc:
        log.warning("webhook for job %s not sent: %s", job_id, exc)
        return
    body = payload(job)
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: ts, EVENT_HEADER: "job.finished"}
    if settings.webhook_secret:
        headers[SIGNATURE_HEADER] = sign(settings.webhook_secret, ts, body)
    attempt = task.request.retries + 1
    try:
        resp = requests.post(url, data=body, headers=headers, timeout=10, allow_redirects=False)
    except requests.RequestException as exc:
        log.warning("webhook for job %s failed (attempt %d): %s", job_id, attempt, exc)
        raise task.retry(exc=exc, countdown=min(300, 2 ** task.request.retries))
    if resp.status_code >= 500 or resp.status_code in RETRY_STATUSES:
        log.warning("webhook for job %s answered %d (attempt %d)", job_id, resp.status_code, attempt)
        raise task.retry(exc=RuntimeError(f"HTTP {resp.status_code}"), countdown=min(300, 2 ** task.request.retries))
    if resp.status_code >= 400:
        log.warning("webhook for job %s refused with %d; not retried", job_id, resp.status_code)
        return
    jobs.set_field(job_id, webhook_delivered_at=time.time())
