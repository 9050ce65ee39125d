"""The job and item records: every field declared once, with the documents that show it.

Jobs and items live in Redis (`sdq.jobstore`); documents show parts of them: the task message a
worker receives (`MESSAGE`, items only), the status view of the HTTP API (`STATUS`), the job's
manifest in storage (`MANIFEST`) and the webhook body (`WEBHOOK`, the job only). Adding a field
to a document means adding it here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

MESSAGE, STATUS, MANIFEST, WEBHOOK = "message", "status", "manifest", "webhook"
"""The documents that show item fields."""


def _shown(*documents: str, default: Any = None) -> Any:
    return field(default=default, metadata={"documents": frozenset(documents)})


@dataclass
class Job:
    """A batch of items sharing a model, a pipeline and defaults (None: not set yet)."""

    id: str | None = _shown(STATUS, MANIFEST, WEBHOOK)
    state: str | None = _shown(STATUS, MANIFEST, WEBHOOK)
    created_at: float | None = _shown(STATUS, MANIFEST, WEBHOOK)
    started_at: float | None = _shown(STATUS, MANIFEST, WEBHOOK)
    finished_at: float | None = _shown(STATUS, MANIFEST, WEBHOOK)
    model: str | None = _shown(STATUS, MANIFEST, WEBHOOK)
    pipeline: str | None = _shown(STATUS, MANIFEST, WEBHOOK)
    params: dict | None = _shown(STATUS, MANIFEST)
    sweep: dict | None = _shown(STATUS, MANIFEST)
    requires: dict | None = _shown(STATUS, MANIFEST)
    priority: int | None = _shown(STATUS, MANIFEST, WEBHOOK)
    seed: int | None = _shown(MANIFEST, WEBHOOK)
    n_items: int | None = _shown(STATUS, WEBHOOK)
    warnings: list | None = _shown(STATUS)
    counts: dict | None = _shown(MANIFEST, WEBHOOK)  # the status view adds its own, with progress
    manifest_key: str | None = _shown(WEBHOOK)
    grid_key: str | None = _shown(MANIFEST, WEBHOOK)


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
    cached_from: dict | None = _shown(STATUS, MANIFEST)  # {job, index} of the stored result it copies


_FIELDS = {(record, doc): tuple((f.name, f.default) for f in fields(record) if doc in f.metadata["documents"])
           for record in (Job, Item) for doc in (MESSAGE, STATUS, MANIFEST, WEBHOOK)}


def project(record: dict[str, Any], document: str, kind: type = Item) -> dict[str, Any]:
    """The part of a stored record of `kind` (`Item` or `Job`) that `document` shows, missing fields
    at their default."""
    return {name: record.get(name, default) for name, default in _FIELDS[(kind, document)]}
