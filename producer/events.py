"""`GET /v1/jobs/{id}/events`: a job's events as Server-Sent Events.

The stream subscribes to the job's Redis channel *before* it reads the job, so nothing published in
between is lost; then it sends

1. ``job.state`` — the current status document (without items and without the queue position,
   whose scan of the unfinished jobs a status read pays, not a stream), so a late client starts in sync;
2. ``item.started`` / ``item.progress`` / ``item.finished`` (with a presigned ``url`` once the image
   is stored) as they happen (events published between subscribe and snapshot may repeat what the
   snapshot already shows), and ``item.preview`` (a small JPEG of an item's image forming, inline as a
   ``data:`` URL, for jobs that ask with `params.preview`; at most one every `STREAM_PREVIEW_INTERVAL`
   seconds per stream, the others dropped: previews are a view, never a record);
3. ``job.finished`` — then the stream ends (at once, when the job had already ended).

A comment line (``: keep-alive``) goes out every `KEEPALIVE_S` seconds so proxies keep the
connection open. A stream lives at most `max_seconds` (SDQ_STREAM_MAX_SECONDS): then it ends with a
``stream.timeout`` event and the client reconnects after the ``retry:`` hint sent first, getting a
fresh snapshot. The producer serves requests on gevent greenlets (see `sdq producer`), so an open
stream costs one greenlet and one Redis connection, not a thread. A tenant holds at most
`SDQ_MAX_STREAMS` streams at once over all producers (`open_stream`; more: 429 with `Retry-After`).
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterator

from sdq.state.limits import TenantSlots

from producer.status import job_view
from sdq import contract, defaults
from sdq.records import Item, Job
from sdq.state.store import JobStore
from storage import ResultStore

KEEPALIVE_S = 15.0
"""Seconds between keep-alive comments on an idle stream."""

POLL_S = 1.0
"""Longest wait for one Redis message; also how often a quiet stream re-checks the job."""


def sse(event: str, data: Any) -> str:
    """One SSE frame."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _finished(job: Job) -> dict[str, Any]:
    return {"id": job.id, "state": job.state,
            "counts": {k: job.counts[k] for k in ("succeeded", "failed", "cancelled")}}


def stream(jobs: JobStore, store: ResultStore, job_id: str, keepalive: float = KEEPALIVE_S,
           max_seconds: float = defaults.STREAM_MAX_SECONDS) -> Iterator[str]:
    """The SSE frames of one job until it finishes or `max_seconds` pass (see the module docstring)."""
    events = jobs.job_events(job_id)
    try:
        # 1. Snapshot, read after subscribing.
        job = jobs.get(job_id)
        if job is None:
            return
        yield f"retry: {defaults.STREAM_RETRY_MS}\n\n"
        yield sse("job.state", job_view(job, jobs, store, with_items=False, with_position=False))
        if job.state in contract.TERMINAL_STATES:
            yield sse("job.finished", _finished(job))
            return
        # 2. Live events until job.finished.
        last_sent = last_check = opened = time.monotonic()
        last_preview = float("-inf")
        while True:
            raw = events.next_raw(POLL_S)
            now = time.monotonic()
            if now - opened >= max_seconds:
                yield sse("stream.timeout", {"id": job_id, "reconnect_ms": defaults.STREAM_RETRY_MS})
                return
            if raw is None:
                if now - last_sent >= keepalive:
                    last_sent = now
                    yield ": keep-alive\n\n"
                if now - last_check >= keepalive:  # the job expired or was removed
                    last_check = now
                    current = jobs.get(job_id)
                    if current is None:
                        return
                    if current.state in contract.TERMINAL_STATES:
                        yield sse("job.finished", _finished(current))
                        return
                continue
            event = json.loads(raw)
            name, data = event.get("event"), event.get("data") or {}
            if name == "item.preview":  # at most one per STREAM_PREVIEW_INTERVAL per stream, the others dropped
                if now - last_preview < defaults.STREAM_PREVIEW_INTERVAL:
                    continue
                last_preview = now
            if name == "item.finished":
                item = Item.from_record(data)
                if item.state == "succeeded" and item.key:
                    data["url"] = store.url(item.key)
            last_sent = now
            yield sse(name, data)
            if name == "job.finished":
                return
    finally:
        events.close()


def open_stream(slots: TenantSlots, owner: str, jobs: JobStore, store: ResultStore,
                job_id: str, max_seconds: float = defaults.STREAM_MAX_SECONDS) -> Iterator[str]:
    """`stream` holding one of `owner`'s stream slots until it ends or the client leaves.

    Takes the slot (TooManyRequests when the tenant holds all of them) and reads the first frame here,
    so a refusal or a Redis error is still a JSON answer."""
    member = slots.take(owner)
    try:
        frames = stream(jobs, store, job_id, max_seconds=max_seconds)
        first = next(frames, "")
    except BaseException:
        slots.give_back(owner, member)
        raise

    def held() -> Iterator[str]:
        try:
            yield first
            yield from frames
        finally:
            frames.close()
            slots.give_back(owner, member)

    return held()
