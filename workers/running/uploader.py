"""Background PNG (and a video item's MP4) encoding and upload, so the device starts the next item at once."""
from __future__ import annotations

import io
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from PIL.PngImagePlugin import PngInfo

from sdq import contract, defaults
from sdq.state.errors import StateError
from sdq.state.runs import CLAIMED, ENDED_JOB, HELD, NOT_RECORDED
from sdq.state.store import JobStore
from storage import ResultStore, StorageUnavailable
from workers.loading.loadwatch import progress_while
from workers.testing.faults import Faults
from workers.running.retry import retry_redis
from workers.running.thumbs import store_thumb
from workers.running.video import MP4_CONTENT_TYPE, Clip, encode_mp4, video_key

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


class Superseded(Exception):
    """This run's claim on the item ended before its PUT (cancelled, superseded, or a backup stored it)."""


class Uploader:
    """Encodes, uploads and records finished items on a small thread pool.

    The encoded PNG is kept while the store rides out an S3 outage (`storage.s3`), so an image is
    never made twice for a slow bucket. A transient S3 error beyond the store's outage limit, or
    Redis staying unreachable, makes the item's future raise: the runner then gives the chunk back
    to the queue. Any other upload error fails the item."""

    def __init__(self, store: ResultStore, jobs: JobStore, on_job_finished: Callable[[str], None], threads: int = 4,
                 faults: Faults | None = None, progress: Callable[[], None] | None = None) -> None:
        self.store = store
        self.jobs = jobs
        self.on_job_finished = on_job_finished
        self.faults = faults or Faults(None, "")
        self.progress = progress or (lambda: None)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sdq-upload")

    def submit(self, job_id: str, index: int, image, infotext: str, fields: dict[str, Any],
               steps_reported: int = 0, transform: Callable[[Any], Any] | None = None,
               on_stored: Callable[[dict[str, Any]], None] | None = None,
               worker: str = "", gen: int = 0) -> Future:
        """Queue one finished image of the run of attempt `gen` on `worker`; the item turns
        `succeeded` once it is in the bucket. The run first claims the item (`JobStore.claim_result`):
        a run that is not the item's current one (superseded, reaped, cancelled) or that lost to a
        straggler backup stores nothing; the claim is asked again right before each PUT attempt, so a
        run cancelled or superseded after claiming stores nothing either. Once recorded,
        `on_stored(fields)` registers it in the result cache (its errors never fail the item)."""
        return self.pool.submit(self._upload, job_id, index, image, infotext, fields, transform, on_stored,
                                worker, gen)

    def _claim(self, job_id: str, index: int, worker: str, gen: int) -> bool:
        """Whether this run may store the item; while a live backup holds the claim, ask again (the
        backup may still fail or die: then the claim comes back here)."""
        while True:
            answer = retry_redis(lambda: self.jobs.claim_result(job_id, index, worker, gen))
            if answer != HELD:
                return answer == CLAIMED
            self.progress()  # waiting on a live copy is not a stall
            time.sleep(defaults.CLAIM_POLL)

    def _upload(self, job_id, index, image, infotext, fields, transform, on_stored=None, worker="", gen=0) -> None:
        key = contract.result_key(job_id, index)
        timings = dict(fields.get("timings") or {})
        self.faults.hit("upload")
        if not self._claim(job_id, index, worker, gen):
            log.info("job %s item %d: not this run's to store (another run stored it, or it was superseded); "
                     "this result is dropped", job_id, index)
            return

        def still_ours() -> None:  # asked again right before each PUT attempt: a cancel may have come since
            if not self._claim(job_id, index, worker, gen):
                raise Superseded

        try:
            t0 = time.perf_counter()
            clip: Clip | None = image if isinstance(image, Clip) else None
            if clip is not None:  # a video: its MP4, and its poster stored at the image's key
                with progress_while(self.progress):  # a long clip's encode is not a hang
                    mp4, image = encode_mp4(clip.frames, clip.fps, infotext), clip.poster()
            elif transform is not None:
                image = transform(image)
            data = encode_png(image, infotext)
            t1 = time.perf_counter()
            self.faults.hit("claimed")
            if clip is not None:  # the MP4 first: a stored poster means its clip is stored too
                self.store.put(video_key(job_id, index), mp4, content_type=MP4_CONTENT_TYPE, before_attempt=still_ours)
            self.store.put(key, data, content_type="image/png", before_attempt=still_ours)
            self.faults.hit("uploaded")
            t2 = time.perf_counter()
            timings.update(encode=round(t1 - t0, 4), upload=round(t2 - t1, 4))
            thumb = store_thumb(self.store, job_id, index, image)  # {} when it failed: the item still succeeds
            state, extra = "succeeded", {"key": key, "bytes": len(data), "timings": timings, **thumb}
            if clip is not None:
                extra.update(video_key=video_key(job_id, index), video_bytes=len(mp4))
        except Superseded:
            log.info("job %s item %d: cancelled or superseded after its claim; this result is dropped", job_id, index)
            return
        except Exception as exc:  # noqa: BLE001 - classified: outage -> chunk again, else the item fails
            if isinstance(exc, StorageUnavailable | StateError):
                raise
            log.exception("upload of %s failed", key)
            state, extra = "failed", {"error": f"upload failed: {type(exc).__name__}: {exc}"}
        self.progress()
        outcome = retry_redis(lambda: self.jobs.record_outcome(job_id, index, state, {**fields, **extra}, worker, gen))
        if outcome == ENDED_JOB:
            self.faults.hit("finished")
            self.on_job_finished(job_id)
        if outcome == NOT_RECORDED:
            log.info("job %s item %d: superseded while it was stored; not recorded, not cached", job_id, index)
        elif state == "succeeded" and on_stored is not None:
            try:
                on_stored({**fields, **extra})
            except Exception:  # noqa: BLE001 - a result not cached is only a later miss
                log.warning("result of job %s item %d not registered in the result cache", job_id, index,
                            exc_info=True)

    def shutdown(self) -> None:
        """Finish queued uploads, then stop."""
        self.pool.shutdown(wait=True)
