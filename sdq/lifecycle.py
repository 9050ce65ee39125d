"""What happens when a job ends: its manifest is written and its webhook is sent."""
from __future__ import annotations

import json
import logging
from typing import Any

from sdq import contract
from sdq.jobstore import JobStore

log = logging.getLogger(__name__)

MANIFEST_ITEM_FIELDS = ("index", "prompt", "negative_prompt", "seed", "init_image", "params", "state",
                        "worker", "device", "dtype", "duration_s", "key", "error", "attempts")


def manifest(job: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest document: everything needed to reproduce every image of the job."""
    head = {k: job.get(k) for k in ("id", "state", "created_at", "started_at", "finished_at", "model",
                                    "pipeline", "params", "requires", "priority", "seed", "counts")}
    return {"job": head, "items": [{k: it.get(k) for k in MANIFEST_ITEM_FIELDS} for it in items]}


def finalize_job(jobs: JobStore, store, job_id: str, celery=None) -> None:
    """Write `jobs/<id>/manifest.json` and queue the webhook, once the job has ended."""
    job = jobs.get(job_id)
    if job is None or job.get("state") not in contract.TERMINAL_STATES:
        return
    doc = manifest(job, jobs.all_items(job_id))
    key = contract.manifest_key(job_id)
    store.put(key, json.dumps(doc, indent=1).encode(), content_type="application/json")
    jobs.set_field(job_id, manifest_key=key)
    if job.get("webhook_url") and celery is not None:
        celery.send_task(contract.TASK_WEBHOOK, kwargs={"job_id": job_id}, queue=contract.CONTROL_QUEUE)
