"""Webhook delivery for finished jobs (runs as a Celery task on any worker)."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time

import requests

from sdq.config import Settings
from sdq.jobstore import JobStore

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Sdq-Signature"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` HMAC of `<timestamp>.<body>` with the webhook secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def deliver_webhook(task, jobs: JobStore, settings: Settings, job_id: str) -> None:
    """POST the job summary to its webhook_url; retry with exponential backoff on failure."""
    job = jobs.get(job_id)
    if job is None or not job.get("webhook_url"):
        return
    summary = {k: job.get(k) for k in ("id", "state", "created_at", "finished_at", "model", "pipeline",
                                       "n_items", "counts", "manifest_key")}
    body = json.dumps({"event": "job.finished", "job": summary}).encode()
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Sdq-Timestamp": ts,
               SIGNATURE_HEADER: sign(settings.webhook_secret, ts, body)}
    try:
        resp = requests.post(job["webhook_url"], data=body, headers=headers, timeout=10)
        resp.raise_for_status()
    except requests.RequestException as exc:
        log.warning("webhook for job %s failed (attempt %d): %s", job_id, task.request.retries + 1, exc)
        raise task.retry(exc=exc, countdown=min(300, 2 ** task.request.retries))
