"""What happens when a job ends: its grid and manifest are written and its webhook is sent.

The Lua step that ends a job records it "to finalise" (`sdq.state.keys.FINALIZE_KEY`) atomically
with its final state. Whoever made that step queues the finalize task (`sdq.celery_app.request_finalize`); the
task (`finalize_job`) is idempotent and retried until it succeeds, and a worker's sweeper sends it
again for any job still waiting, so a finishing worker that dies never loses the manifest."""
from __future__ import annotations

import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sdq import contract
from sdq.records import MANIFEST, Item, Job
from sdq.state.store import JobStore

log = logging.getLogger(__name__)

def manifest(job: Job, items: list[Item]) -> dict[str, Any]:
    """The manifest document: everything needed to reproduce every image of the job."""
    return {"job": job.show(MANIFEST), "items": [it.show(MANIFEST) for it in items]}


def write_grid(store, job: Job, items: list[Item]) -> str:
    """Compose the job's labeled contact sheet from its stored PNGs; returns its key."""
    from PIL import Image

    from sdq.gridlayout import cell_for, grid_key
    from workers.finishing.grid import make_grid

    done = [it for it in items if it.state == "succeeded" and it.key]
    cell = cell_for(job, items)  # images shrink as they load, so the sheet's cap bounds memory too

    def load(it: Item):
        image = Image.open(io.BytesIO(store.get(it.key))).convert("RGB")
        image.thumbnail(cell)
        return it.index, image

    with ThreadPoolExecutor(max_workers=8) as pool:
        images = dict(pool.map(load, done))
    buf = io.BytesIO()
    make_grid(job, items, images).save(buf, format="PNG")
    key = grid_key(job.id)
    store.put(key, buf.getvalue(), content_type="image/png")
    return key


def finalize_job(jobs: JobStore, store, job_id: str, celery=None) -> None:
    """Write the grid (when asked) and `jobs/<id>/manifest.json`, and queue the webhook, once the job
    ended. Idempotent: run by the finalize task until it succeeds (the same objects are written
    again; the webhook is queued once per job end). Raises on a storage or Redis error."""
    job = jobs.get(job_id)
    if job is None or job.state not in contract.TERMINAL_STATES:
        jobs.finalized(job_id)  # gone, or re-opened by a retry: nothing to finalise now
        return
    items = jobs.all_items(job_id)
    if job.params.get("grid"):
        try:
            job.grid_key = write_grid(store, job, items)
            jobs.set_field(job_id, grid_key=job.grid_key)
        except (OSError, ValueError):  # an unreadable image: the manifest and webhook still go out
            log.exception("grid of job %s failed", job_id)
    doc = manifest(job, items)
    key = contract.manifest_key(job_id)
    store.put(key, json.dumps(doc, indent=1).encode(), content_type="application/json")
    jobs.set_field(job_id, manifest_key=key)
    # Sent first, marked second: a send that raises, or a finaliser killed in between, leaves the webhook
    # to the next run of this (retried, re-sent) task; at worst it is queued twice (receivers deduplicate).
    if job.webhook_url and celery is not None and not jobs.webhook_queued(job_id):
        celery.send_task(contract.TASK_WEBHOOK, kwargs={"job_id": job_id}, queue=contract.CONTROL_QUEUE)
        jobs.mark_webhook_queued(job_id)
    jobs.finalized(job_id)
