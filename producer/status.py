"""The job status document of GET /v1/jobs/{id} (constant time in the job's size)."""
from __future__ import annotations

import time
from typing import Any

from sdq.records import STATUS, Item, Job
from sdq.state.store import JobStore
from storage import ResultStore


def item_view(item: Item, store: ResultStore) -> dict[str, Any]:
    """An item as the API shows it, with a presigned URL once it succeeded."""
    out = item.show(STATUS)
    out["url"] = store.url(item.key) if item.state == "succeeded" and item.key else None
    # The worker's small WebP thumbnail (workers.running.thumbs) for the web page's gallery; an image that
    # already fits in a thumbnail has none and is its own.
    out["thumb_url"] = store.url(item.thumb_key) if out["url"] and item.thumb_key else out["url"]
    out["video_url"] = store.url(item.video_key) if out["url"] and item.video_key else None  # a video's MP4
    return out


def job_view(job: Job, jobs: JobStore, store: ResultStore, offset: int = 0,
             limit: int = 100, with_items: bool = True, with_position: bool = True) -> dict[str, Any]:
    """The status document: counters, progress, ETA and one page of items.

    The queue position scans the unfinished jobs, so listings leave it out (`with_position=False`)."""
    out = job.show(STATUS)
    out["counts"] = job.counts
    total, done = job.steps_total, job.steps_done
    out["progress"] = round(min(1.0, done / total), 4) if total else 1.0
    out["steps"] = {"done": done, "total": total}
    out["eta_seconds"] = _eta(job, total, done)
    if with_position:
        out["queue_position"] = jobs.queue_position(job)
    out["manifest"] = store.url(job.manifest_key) if job.manifest_key else None
    out["grid"] = store.url(job.grid_key) if job.grid_key else None
    if with_items:
        items = jobs.items(job.id, offset, limit, job.n_items)
        out["items"] = [item_view(it, store) for it in items]
        out["offset"], out["limit"] = offset, limit
    return out


def _eta(job: Job, total: int, done: int) -> float | None:
    """Seconds left at the job's measured rate (steps done since it started); None before any step."""
    if job.finished_at:
        return 0.0
    started = job.started_at
    if not started or done <= 0:
        return None
    rate = done / max(1e-6, time.time() - started)
    return round((total - done) / rate, 1)
