"""Background PNG encoding and upload, so the device starts the next item at once."""
from __future__ import annotations

import io
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from PIL.PngImagePlugin import PngInfo

from sdq import contract
from sdq.jobstore import JobStore
from workers.thumbs import store_thumb

log = logging.getLogger(__name__)

PNG_COMPRESS_LEVEL = 4
"""zlib level for result PNGs: near the size of level 6 at about half the encode time."""


def encode_png(image, infotext: str) -> bytes:
    """PNG bytes with the A1111 `parameters` text chunk."""
    info = PngInfo()
    info.add_text("parameters", infotext)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


class Uploader:
    """Encodes, uploads and records finished items on a small thread pool."""

    def __init__(self, store, jobs: JobStore, on_job_finished: Callable[[str], None], threads: int = 4) -> None:
        self.store = store
        self.jobs = jobs
        self.on_job_finished = on_job_finished
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sdq-upload")

    def submit(self, job_id: str, index: int, image, infotext: str, fields: dict[str, Any],
               steps_reported: int, transform: Callable[[Any], Any] | None = None) -> Future:
        """Queue one finished image; the item turns `succeeded` once it is in the bucket."""
        return self.pool.submit(self._upload, job_id, index, image, infotext, fields, steps_reported, transform)

    def _upload(self, job_id, index, image, infotext, fields, steps_reported, transform) -> None:
        key = contract.result_key(job_id, index)
        timings = dict(fields.get("timings") or {})
        try:
            t0 = time.perf_counter()
            if transform is not None:
                image = transform(image)
            data = encode_png(image, infotext)
            t1 = time.perf_counter()
            self.store.put(key, data, content_type="image/png")
            t2 = time.perf_counter()
            timings.update(encode=round(t1 - t0, 4), upload=round(t2 - t1, 4))
            thumb = store_thumb(self.store, job_id, index, image)  # {} when it failed: the item still succeeds
            finished = self.jobs.finish_item(job_id, index, "succeeded", {**fields, "key": key, "bytes": len(data),
                                                                          "timings": timings, **thumb}, steps_reported)
        except Exception as exc:  # noqa: BLE001 - any failure fails the item, never the worker
            log.exception("upload of %s failed", key)
            finished = self.jobs.finish_item(job_id, index, "failed",
                                             {**fields, "error": f"upload failed: {exc}"}, steps_reported)
        if finished:
            self.on_job_finished(job_id)

    def shutdown(self) -> None:
        """Finish queued uploads, then stop."""
        self.pool.shutdown(wait=True)
