"""What one tenant (the owner of a token) may see of, and take from, a shared producer."""
from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

from sdq import defaults
from sdq.exceptions import NotFound, TooManyRequests
from sdq.records import Job, WorkerRecord
from sdq.state.store import JobStore


def owner_of(tokens: dict[str, str], presented: str) -> str | None:
    """The owner of the `presented` token: compared with every known token in constant time (no early exit)."""
    given, owner = presented.encode("utf-8", "surrogatepass"), None
    for token, who in tokens.items():
        if hmac.compare_digest(token.encode(), given):
            owner = who
    return owner


def presented_token(header: str, basic: bool = False) -> str:
    """The token in an `Authorization` header: `Bearer <token>`, or with `basic` also HTTP Basic with the token
    as the password (any user name: A1111's `--api-auth` clients); "" when there is none."""
    if header.startswith("Bearer "):
        return header.removeprefix("Bearer ").strip()
    if basic and header[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return ""
        return decoded.partition(":")[2]
    return ""


def own_job(jobs: JobStore, job_id: str, owner: str) -> Job:
    """The job `job_id` if `owner` submitted it; NotFound otherwise (another tenant's job is not found)."""
    job = jobs.get(job_id) if job_id.isalnum() and len(job_id) <= 64 else None
    if job is None or job.owner != owner:
        raise NotFound(f"no job {job_id!r}")
    return job


def check_queue_room(jobs: JobStore, owner: str, new_items: int, limit: int) -> None:
    """Refuse (429 with Retry-After) a submit that would put more than `limit` of `owner`'s items in the queue.

    A soft cap: two submits racing may both pass, overshooting by at most one job."""
    queued = jobs.queued_items_of(owner)
    if queued + new_items > limit:
        raise TooManyRequests("items", f"{new_items} more items would give you {queued + new_items} queued; the limit "
                              f"per tenant is {limit}; retry when some have run",
                              defaults.QUEUE_FULL_RETRY_AFTER)


def redact_workers(records: list[WorkerRecord], jobs: JobStore, owner: str) -> list[dict[str, Any]]:
    """Worker records as the API shows them, with `current_item` shown only to the owner of the job being made."""
    out = []
    for record in records:
        shown = record.to_record()
        current = record.current_item
        if isinstance(current, dict) and current.get("job"):
            job = jobs.get(str(current["job"]))
            if job is None or job.owner != owner:
                shown["current_item"] = {"busy": True}
        out.append(shown)
    return out
