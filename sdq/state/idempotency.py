"""Idempotent submits: a tenant's request sent again under the same key makes no second job.

A door (``POST /v1/jobs``, or another API's door) turns its client's key into a `Once`: one Redis key
per tenant, door and client key (its SHA-256, so any printable key is safe in a Redis name), and the
fingerprint of the request it came with. `Jobs.create` records the `Once` in the same transaction as
the job (watched, so two requests racing make one job: the loser gets `AlreadySubmitted`), for
`IDEMPOTENCY_TTL` (a day). A producer that dies, or answers an error, after recording leaves the key
naming the job; the client's retry then gets that job back (`first_job`), never a second one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis

from sdq import defaults
from sdq.exceptions import InvalidInput
from sdq.state.keys import job_key, once_key
from sdq.state.redisconn import text

HEADER = "Idempotency-Key"
"""The HTTP header that carries a client's key (and the field a malformed or reused key is named by)."""


@dataclass(frozen=True)
class Once:
    """One request made at most once: its Redis key and its body's fingerprint."""

    key: str
    fingerprint: str

    def record(self, job_id: str) -> str:
        """What the Redis key holds once the job is recorded."""
        return json.dumps({"job": job_id, "fingerprint": self.fingerprint})


def fingerprint(body: Any) -> str:
    """SHA-256 of a request body as canonical JSON (key order and spacing do not matter)."""
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()


def once(owner: str, door: str, client_key: str | None, body: Any, field: str = HEADER) -> Once | None:
    """The `Once` of a request with `client_key` at `door` (None without a key); InvalidInput naming
    `field` for a key that is empty, longer than `IDEMPOTENCY_KEY_MAX` or not printable ASCII."""
    if client_key is None:
        return None
    if not 0 < len(client_key) <= defaults.IDEMPOTENCY_KEY_MAX or not all(" " <= c <= "~" for c in client_key):
        raise InvalidInput(field, f"{field} must be 1 to {defaults.IDEMPOTENCY_KEY_MAX} printable ASCII "
                           f"characters, got {client_key[:40]!r}")
    digest = hashlib.sha256(client_key.encode("ascii")).hexdigest()
    return Once(once_key(owner, door, digest), fingerprint(body))


def recorded_job(raw: bytes | str | None, request: Once, field: str = HEADER) -> str | None:
    """The job a stored `Once` record names (None: none); InvalidInput (422, `idempotency_key_reused`)
    when it was recorded for a different request."""
    if raw is None:
        return None
    doc = json.loads(text(raw))
    if doc.get("fingerprint") != request.fingerprint:
        raise InvalidInput(field, f"this {field} was already used (within {defaults.IDEMPOTENCY_TTL // 3600} h) "
                           f"for a different request, job {doc.get('job')}; use a new key for a new request",
                           code="idempotency_key_reused")
    return str(doc["job"])


def first_job(client: redis.Redis, request: Once) -> str | None:
    """The job an earlier request under this key made, if its record still exists (see `recorded_job`)."""
    job_id = recorded_job(client.get(request.key), request)
    if job_id is not None and not client.exists(job_key(job_id)):
        return None
    return job_id
