"""Webhook delivery for finished jobs (runs as a Celery task on any worker).

The body is ``{"event": "job.finished", "job": {...summary...}}``; headers carry the HMAC signature
described in `sdq.webhooks`. Connection errors, 5xx, 408 and 429 answers raise `WebhookFailed`,
which the courier sends again after an exponential backoff (`workers.finishing.courier`: 1, 2, 4, ... s with
jitter, at most `WEBHOOK_BACKOFF_MAX`, `WEBHOOK_MAX_RETRIES` retries); other 4xx answers are final.
Before every attempt the host is resolved once and checked, and the request connects to that checked
address (Host header and TLS server name stay the URL's host), so a name that re-resolves to a
private address between check and connect (DNS rebinding) reaches nothing. A host that does not
resolve is retried like a connection error. Resolution is inside the attempt's deadline: it runs on
a helper thread waited on for at most `WEBHOOK_DNS_TIMEOUT` (and what is left of the deadline); one
that does not answer in time fails the attempt with `ResolveTimeout`, which carries the helper so
the courier can keep that tenant's thread until the system resolver gives up. Log lines name the
job, never the URL (URLs often carry secrets).

A receiver cannot hold a delivery: every attempt has a hard wall-clock deadline (`WEBHOOK_DEADLINE`,
DNS, connect, TLS, request, status line and headers together; a watchdog shuts the socket down when it
passes, so a receiver trickling bytes gets nowhere), the answer is read with `preload_content=False`
and only its status is used (at most `WEBHOOK_RESPONSE_BYTES` of an error body are read, for the
log). Attempts run on the worker's courier threads (`workers.finishing.courier`), never on the slot that
makes images.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time

import urllib3

from sdq import defaults
from sdq.config import Settings
from sdq.exceptions import InvalidInput, UnresolvedHost, WebhookFailed
from sdq.records import WEBHOOK, Job
from sdq.state.store import JobStore
from sdq.webhooks import (EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, Target,
                          resolve_target, sign, tenant_secret)

log = logging.getLogger(__name__)

RETRY_STATUSES = (408, 429)
"""4xx answers worth retrying; every 5xx is retried too."""


class ResolveTimeout(WebhookFailed):
    """The webhook host's name did not resolve in time; `pending` is the resolver thread still waiting."""

    def __init__(self, message: str, pending: threading.Thread) -> None:
        super().__init__(message)
        self.pending = pending


def resolve_within(url: str, allow_private: bool, timeout: float) -> Target:
    """`resolve_target` that waits at most `timeout` seconds for the resolver (which cannot be interrupted).

    Raises InvalidInput and UnresolvedHost like `resolve_target`, `ResolveTimeout` when it takes longer."""
    outcome: list[Target | BaseException] = []

    def resolve() -> None:
        try:
            outcome.append(resolve_target(url, allow_private))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome.append(exc)

    helper = threading.Thread(target=resolve, name="sdq-webhook-dns", daemon=True)
    helper.start()
    helper.join(max(timeout, 0.0))
    if not outcome:
        raise ResolveTimeout(f"host did not resolve within {timeout:.3g} s", helper)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def payload(job: Job) -> bytes:
    """The webhook body for a finished job."""
    return json.dumps({"event": "job.finished", "job": job.show(WEBHOOK)}).encode()


class Deadline:
    """Shuts down every socket it watches once `seconds` of wall-clock time have passed."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down at the deadline (a duplicate descriptor: the TLS layer may take the original)."""
        dup = sock.dup()
        with self._lock:
            self._socks.append(dup)
            expired = self.expired
        if expired:
            _shutdown(dup)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            socks = list(self._socks)
        for sock in socks:
            _shutdown(sock)

    def close(self) -> None:
        """Stop the timer and let go of the watched sockets."""
        self._timer.cancel()
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            sock.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked on the other descriptor
    except OSError:
        pass


def _watched(base: type, deadline: Deadline) -> type:
    """`base` (a urllib3 connection class) whose new sockets are watched by `deadline`."""

    class Watched(base):  # type: ignore[misc, valid-type]
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            deadline.watch(sock)
            return sock

    return Watched


def post_pinned(target: Target, body: bytes, headers: dict[str, str],
                deadline: float = defaults.WEBHOOK_DEADLINE) -> int:
    """POST `body` to the checked address of `target` within `deadline` seconds of wall-clock time;
    returns the HTTP status (no redirects followed). Raises `WebhookFailed` when the deadline passed."""
    host_header = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
    timeout = urllib3.Timeout(connect=deadline, read=deadline)  # per operation; the Deadline bounds the sum
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(target.ip, target.port, server_hostname=target.host,
                                           assert_hostname=target.host, cert_reqs="CERT_REQUIRED", retries=False,
                                           timeout=timeout)
    else:
        pool = urllib3.HTTPConnectionPool(target.ip, target.port, retries=False, timeout=timeout)
    watchdog = Deadline(deadline)
    pool.ConnectionCls = _watched(pool.ConnectionCls, watchdog)
    try:
        resp = pool.urlopen("POST", target.path, body=body, headers={**headers, "Host": host_header},
                            redirect=False, preload_content=False)
        if watchdog.expired:  # the answer was cut short: whatever status it parsed is not the receiver's
            resp.close()
            raise WebhookFailed(f"no answer within the {deadline:g} s deadline")
        try:
            if resp.status >= 400:  # a little of an error body, for the log; never more
                snippet = resp.read(defaults.WEBHOOK_RESPONSE_BYTES, decode_content=False)
                log.debug("webhook receiver answered %d: %r", resp.status, snippet[:200])
        except (urllib3.exceptions.HTTPError, OSError):
            pass  # the status is all that counts
        finally:
            resp.close()
        return resp.status
    except (urllib3.exceptions.HTTPError, OSError):
        if watchdog.expired:
            raise WebhookFailed(f"no answer within the {deadline:g} s deadline") from None
        raise
    finally:
        watchdog.close()
        pool.close()


def deliver_webhook(jobs: JobStore, settings: Settings, job_id: str, attempt: int = 1,
                    deadline: float = defaults.WEBHOOK_DEADLINE) -> None:
    """POST the job summary to its webhook_url; raises WebhookFailed when the attempt is worth retrying."""
    ends = time.monotonic() + deadline
    job = jobs.get(job_id)
    if job is None or not job.webhook_url:
        return
    # 1. Resolve once (within the deadline) and check; the connection goes to this address.
    try:
        target = resolve_within(job.webhook_url, settings.webhook_allow_private,
                                min(defaults.WEBHOOK_DNS_TIMEOUT, ends - time.monotonic()))
    except ResolveTimeout as exc:
        log.warning("webhook for job %s failed (attempt %d): %s", job_id, attempt, exc)
        raise
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
        status = post_pinned(target, body, headers, max(ends - time.monotonic(), 0.1))
    except WebhookFailed as exc:  # the deadline passed
        log.warning("webhook for job %s failed (attempt %d): %s", job_id, attempt, exc)
        raise
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
