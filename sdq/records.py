"""The item record: every field an item carries, declared once, with the documents that show it.

An item lives in Redis as one JSON object (`sdq.jobstore`); three documents show parts of it: the
task message a worker receives (`MESSAGE`), the status view of the HTTP API (`STATUS`) and the
job's manifest in storage (`MANIFEST`). Adding a field to a document means adding it here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

MESSAGE, STATUS, MANIFEST = "message", "status", "manifest"
"""The documents that show item fields."""


def _shown(*documents: str, default: Any = None) -> Any:
    return field(default=default, metadata={"documents": frozenset(documents)})


@dataclass
class Item:
    """One prompt of a job and what became of it (None: not set yet, or not for this item)."""

    index: int | None = _shown(MESSAGE, STATUS, MANIFEST)
    prompt: str | None = _shown(MESSAGE, STATUS, MANIFEST)
    negative_prompt: str | None = _shown(MESSAGE, STATUS, MANIFEST)
    seed: int | None = _shown(MESSAGE, STATUS, MANIFEST)
    init_image: str | None = _shown(MESSAGE, STATUS, MANIFEST)
    gen: int = _shown(MESSAGE, default=0)  # the attempt a message was published for: a stale one starts nothing
    cache: bool | None = _shown(MESSAGE)  # False: the item opted out of the result cache
    params: dict | None = _shown(STATUS, MANIFEST)
    sweep: dict | None = _shown(STATUS, MANIFEST)
    state: str | None = _shown(STATUS, MANIFEST)
    worker: str | None = _shown(STATUS, MANIFEST)
    device: str | None = _shown(STATUS, MANIFEST)
    dtype: str | None = _shown(STATUS, MANIFEST)
    key: str | None = _shown(STATUS, MANIFEST)
    url: str | None = _shown(STATUS)
    bytes: int | None = _shown(STATUS)
    duration_s: float | None = _shown(STATUS, MANIFEST)
    error: str | None = _shown(STATUS, MANIFEST)
    attempts: int | None = _shown(STATUS, MANIFEST)
    oom_retries: int | None = _shown(STATUS)
    low_memory: bool | None = _shown(STATUS)
    oom_workers: list | None = _shown(STATUS)
    started_at: float | None = _shown(STATUS)
    finished_at: float | None = _shown(STATUS)
    batch: int | None = _shown(STATUS)
    nsfw: bool | None = _shown(STATUS)
    runs: list | None = _shown(STATUS, MANIFEST)
    cached: bool | None = _shown(STATUS, MANIFEST)
    cached_from: str | None = _shown(STATUS, MANIFEST)


_FIELDS = {doc: tuple((f.name, f.default) for f in fields(Item) if doc in f.metadata["documents"])
           for doc in (MESSAGE, STATUS, MANIFEST)}


def project(record: dict[str, Any], document: str) -> dict[str, Any]:
    """The part of an item record (as stored) that `document` shows, missing fields at their default."""
    return {name: record.get(name, default) for name, default in _FIELDS[document]}
