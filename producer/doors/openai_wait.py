"""A synchronous answer on top of the queue: wait for a job's end, then its images in OpenAI's shape.

The wait subscribes to the job's Redis event channel (as `producer.events` does) *before* reading the
job, so a `job.finished` published in between is not lost, and blocks on that channel — under the
producer's gevent workers a waiting request costs one greenlet and one Redis connection, no thread
and no polling loop. The job is read again on `job.finished`, and every `RECHECK_S` seconds in case a
message was missed. Past the bound the request is answered `JobPending` (408) naming the job, which
goes on and can be fetched through `/v1/jobs/{id}`.
"""
from __future__ import annotations

import base64
import io
import time

import redis

from producer import offload
from producer.doors.openai_params import OUTPUT_FORMATS, ImageRequest
from sdq import contract
from sdq.exceptions import SdqError
from sdq.records import Job
from sdq.state.keys import events_channel
from sdq.state.store import JobStore
from storage import ResultStore

RECHECK_S = 5.0
"""Seconds between reads of the job while no event says it ended (a missed message costs at most this)."""


class JobPending(SdqError):
    """The job did not end within the door's wait bound; it goes on."""

    def __init__(self, job_id: str, waited: float) -> None:
        super().__init__(f"job {job_id} has not finished after {waited:g} s; it goes on: fetch its images with "
                         f"GET /v1/jobs/{job_id}")
        self.job_id = job_id


class JobEnded(SdqError):
    """The job ended without every image (an item failed, or it was cancelled)."""

    def __init__(self, job: Job, message: str) -> None:
        super().__init__(message)
        self.job = job


def wait(client: redis.Redis, jobs: JobStore, job_id: str, bound: float, recheck: float = RECHECK_S) -> Job:
    """The job once it has ended; JobPending after `bound` seconds."""
    deadline = time.monotonic() + bound
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(events_channel(job_id))
    try:
        while True:
            job = jobs.get(job_id)
            if job is None or job.state in contract.TERMINAL_STATES:
                return job
            until = min(deadline, time.monotonic() + recheck)
            while (left := until - time.monotonic()) > 0:
                msg = pubsub.get_message(timeout=left)
                if msg and msg.get("type") == "message" and b'"job.finished"' in _raw(msg["data"]):
                    break
            if time.monotonic() >= deadline:
                job = jobs.get(job_id)
                if job is None or job.state in contract.TERMINAL_STATES:
                    return job
                raise JobPending(job_id, bound)
    finally:
        pubsub.close()


def _raw(data: bytes | str) -> bytes:
    return data if isinstance(data, bytes) else data.encode()


def _convert(data: bytes, fmt: str, quality: int | None) -> bytes:
    """A stored PNG re-encoded as `fmt` (jpeg, webp); CPU-heavy, run off the gevent loop."""
    from PIL import Image

    img = Image.open(io.BytesIO(data), formats=["PNG"])
    img.load()
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=OUTPUT_FORMATS[fmt], quality=100 if quality is None else quality)
    return buf.getvalue()


def images(job: Job, jobs: JobStore, store: ResultStore, req: ImageRequest) -> tuple[list[dict[str, str]], str]:
    """The job's images as OpenAI's `data` entries (`url` or `b64_json`) and their size (`WxH`); JobEnded
    unless every item succeeded."""
    if job.state != "succeeded":
        items = jobs.items(job.id, 0, min(job.n_items, 100), job.n_items)
        errors = [f"image {it.index}: {it.error}" for it in items if it.state == "failed" and it.error]
        raise JobEnded(job, f"job {job.id} ended {job.state}" + (f" ({'; '.join(errors[:3])})" if errors else "")
                       + f"; see GET /v1/jobs/{job.id}")
    out: list[dict[str, str]] = []
    items = jobs.items(job.id, 0, job.n_items, job.n_items)
    for item in items:
        if req.response_format == "url":
            out.append({"url": store.url(item.key)})
            continue
        data = store.get(item.key)
        if req.output_format != "png":
            data = offload.run(_convert, data, req.output_format, req.compression)
        out.append({"b64_json": base64.b64encode(data).decode("ascii")})
    size = items[0].size if items and items[0].size else None
    return out, f"{size[0]}x{size[1]}" if size else ""


def response(job: Job, data: list[dict[str, str]], size: str, req: ImageRequest) -> dict:
    """The body of a successful answer: OpenAI's `ImagesResponse`, plus the sdq job's id."""
    body = {"created": int(job.created_at or time.time()), "data": data, "output_format": req.output_format,
            "job_id": job.id}
    if size:
        body["size"] = size
    if req.quality in ("low", "medium", "high", "xhigh", "max"):
        body["quality"] = req.quality
    return body


