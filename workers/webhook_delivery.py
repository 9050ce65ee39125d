"""Webhook delivery for finished jobs (runs as a Celery task on any worker).

The body is ``{"event": "job.finished", "job": {...summary...}}``; headers carry the HMAC signature
described in `sdq.webhooks`. Connection errors, 5xx, 408 and 429 answers raise `WebhookFailed`,
which the Celery task retries with its own exponential backoff (`workers.tasks`: 1, 2, 4, ... s with
jitter, at most `WEBHOOK_BACKOFF_MAX`, `WEBHOOK_MAX_RETRIES` retries); other 4xx answers are final.
Before every attempt the host is resolved once and checked, and the request connects to that checked
address (Host header and TLS server name stay the URL's host), so a name that re-resolves to a
private address between check and connect (DNS rebinding) reaches nothing. A host that does not
resolve is retried like a connection error. Log lines name the job, never the URL (URLs often carry
secrets).
"""
from __future__ import annotations

import json
import logging
import time

import urllib3

from sdq.config import Settings
from sdq.exceptions import InvalidInput, UnresolvedHost, WebhookFailed
from sdq.records import WEBHOOK, Job
from sdq.state.store import JobStore
from sdq.webhooks import (EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, Target,
                          resolve_target, sign, tenant_secret)

log = logging.getLogger(__name__)

RETRY_STATUSES = (408, 429)
"""4xx answers worth retrying; every 5xx is retried too."""

def payload(job: Job) -> bytes:
    """The webhook body for a finished job."""
    return json.dumps({"event": "job.finished", "job": job.show(WEBHOOK)}).encode()


def post_pinned(target: Target, body: bytes, headers: dict[str, str], timeout: float = 10.0) -> int:
    """POST `body` to the checked address of `target`; returns the HTTP status (no redirects followed)."""
    host_header = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(target.ip, target.port, server_hostname=target.host,
                                           assert_hostname=target.host, cert_reqs="CERT_REQUIRED", retries=False)
    else:
        pool = urllib3.HTTPConnectionPool(target.ip, target.port, retries=False)
    try:
        resp = pool.urlopen("POST", target.path, body=body, headers={**headers, "Host": host_header},
                            redirect=False, timeout=urllib3.Timeout(total=timeout), preload_content=True)
        return resp.status
    finally:
        pool.close()


def deliver_webhook(jobs: JobStore, settings: Settings, job_id: str, attempt: int = 1) -> None:
    """POST the job summary to its webhook_url; raises WebhookFailed when the attempt is worth retrying."""
    job = jobs.get(job_id)
    if job is None or not job.webhook_url:
        return
    # 1. Resolve once and check; the connection goes to this address.
    try:
        target = resolve_target(job.webhook_url, settings.webhook_allow_private)
    except InvalidInput as exc:
        log.warning("webhook for job %s not sent: target refused (%s)", job_id, exc.code)
        return
    except UnresolvedHost as exc:
        log.warning("webhook for job %s: host does not resolve (attempt %d)", job_id, attempt)
        raise WebhookFailed(str(exc)) from None
    # 2. Sign with the job owner's own secret.
    body = payload(job)
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: ts, EVENT_HEADER: "job.finished"}
    if settings.webhook_secret:
        headers[SIGNATURE_HEADER] = sign(tenant_secret(settings.webhook_secret, job.owner), ts, body)
    # 3. Deliver; retry connection errors, 5xx, 408 and 429.
    try:
        status = post_pinned(target, body, headers)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        log.warning("webhook for job %s failed (attempt %d): %s", job_id, attempt, type(exc).__name__)
        raise WebhookFailed(type(exc).__name__) from None
    if status >= 500 or status in RETRY_STATUSES:
        log.warning("webhook for job %s answered %d (attempt %d)", job_id, status, attempt)
        raise WebhookFailed(f"HTTP {status}")
    if status >= 400:
        log.warning("webhook for job %s refused with %d; not retried", job_id, status)
        return
    jobs.set_field(job_id, webhook_delivered_at=time.time())
