"""What one tenant (the owner of a token) may see of, and take from, a shared producer."""
from __future__ import annotations

from typing import Any

from sdq import defaults
from sdq.exceptions import TooManyRequests
from sdq.jobstore import JobStore


def check_queue_room(jobs: JobStore, owner: str, new_items: int, limit: int) -> None:
    """Refuse (429 with Retry-After) a submit that would put more than `limit` of `owner`'s items in the queue."""
    queued = jobs.queued_items_of(owner)
    if queued + new_items > limit:
        raise TooManyRequests("items", f"{new_items} more items would give you {queued + new_items} queued; the limit "
                              f"per tenant is {limit}; retry when some have run",
                              defaults.QUEUE_FULL_RETRY_AFTER)


def redact_workers(records: list[dict[str, Any]], jobs: JobStore, owner: str) -> list[dict[str, Any]]:
    """Worker records with `current_item` shown only to the owner of the job being made."""
    out = []
    for record in records:
        current = record.get("current_item")
        if isinstance(current, dict) and current.get("job"):
            job = jobs.get(str(current["job"]))
            if job is None or job.get("owner", "") != owner:
                record = {**record, "current_item": {"busy": True}}
        out.append(record)
    return out
