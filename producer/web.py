"""Routes the web page needs beyond the core API: a job's results as one zip, and queue depths.

``GET /v1/jobs/{id}/download.zip`` streams a zip of the job's stored PNGs (``<id>/<index>.png``),
its ``manifest.json`` and ``grid.png`` when they exist, straight from the bucket: each object is
copied in `CHUNK_BYTES` pieces and every piece leaves as soon as it is written, so memory stays
bounded whatever the job's size. PNGs are stored (they are compressed already), the manifest is
deflated. The same tenant check as every job route applies (another tenant's job is a 404).
"""
from __future__ import annotations

import logging
import zipfile
from typing import Iterator

from flask import Blueprint, Response, current_app, g, jsonify, stream_with_context

from producer.meta import queue_depths
from producer.tenants import own_job
from sdq.records import Job
from sdq.state.store import JobStore
from storage import ResultStore, StorageError, StorageUnavailable
from storage.s3 import STREAM_CHUNK_BYTES

bp = Blueprint("web", __name__)
log = logging.getLogger(__name__)

CHUNK_BYTES = STREAM_CHUNK_BYTES
"""Bytes copied from the bucket into the zip at a time."""

ITEMS_PAGE = 500
"""Items read from the job store at a time while listing a job's results."""


class _Pipe:
    """A write-only, unseekable file whose written bytes are drained by the generator."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def drain(self) -> Iterator[bytes]:
        """The bytes written since the last drain."""
        parts, self.parts = self.parts, []
        yield from parts


def _entries(job: Job, jobs: JobStore) -> Iterator[tuple[str, str]]:
    """(name in the zip, bucket key) of each stored result of the job, in index order."""
    for offset in range(0, job.n_items, ITEMS_PAGE):
        for it in jobs.items(job.id, offset, ITEMS_PAGE, job.n_items):
            if it.state == "succeeded" and it.key:
                yield f"{job.id}/{it.key.rsplit('/', 1)[-1]}", it.key
    for key, name in ((job.grid_key, "grid.png"), (job.manifest_key, "manifest.json")):
        if key:
            yield f"{job.id}/{name}", key


def zip_stream(store: ResultStore, jobs: JobStore, job: Job, chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The bytes of a zip of the job's stored results, produced piece by piece."""
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, mode="w", allowZip64=True) as zf:
        for name, key in _entries(job, jobs):
            try:
                size, pieces = store.stream(key, chunk)
            except StorageUnavailable:
                raise
            except StorageError as exc:  # removed from the bucket since: leave it out, keep the rest
                log.warning("zip of job %s: skipping %s (%s)", job.id, key, exc)
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED
            info.file_size = size
            with zf.open(info, mode="w", force_zip64=info.file_size > 2**31) as out:
                for piece in pieces:
                    out.write(piece)
                    yield from pipe.drain()
            yield from pipe.drain()
    yield from pipe.drain()


@bp.get("/v1/jobs/<job_id>/download.zip")
def download_zip(job_id: str):
    """All of a job's stored images and its manifest as one zip, streamed from the bucket."""
    ext = current_app.extensions
    job = own_job(ext["sdq_jobs"], job_id, g.owner)
    body = stream_with_context(zip_stream(ext["sdq_store"], ext["sdq_jobs"], job))
    return Response(body, mimetype="application/zip", headers={
        "Content-Disposition": f'attachment; filename="sdq-{job.id}.zip"', "Cache-Control": "no-store"})


@bp.get("/v1/queues")
def queues():
    """Task messages waiting per queue (capability class): those live workers consume, and any other holding some."""
    depths = queue_depths(current_app.extensions["sdq_jobs"])
    return jsonify({"queues": [{"name": q, "messages": n} for q, n in sorted(depths.items())]})
