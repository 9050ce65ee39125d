"""A waited-for job's images in OpenAI's shape (the wait itself is `producer.doors.waiting`)."""
from __future__ import annotations

import base64
import io
import time

from producer import offload
from producer.doors.openai_params import OUTPUT_FORMATS, ImageRequest
from sdq.exceptions import SdqError
from sdq.records import Job
from sdq.state.store import JobStore
from storage import ResultStore


class JobEnded(SdqError):
    """The job ended without every image (an item failed, or it was cancelled)."""

    def __init__(self, job: Job, message: str) -> None:
        super().__init__(message)
        self.job = job


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


