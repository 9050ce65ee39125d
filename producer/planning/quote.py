"""A quote before running: what `POST /v1/jobs` with `"dry_run": true` answers. Nothing is written.

The job is planned exactly as a submit plans it (so bad input is the same 4xx), then routed onto the live
fleet on paper: for each queue its items would go to, which live workers could take them and why the
others could not, seconds per item on each able worker from the speed model, and when the job would start
and finish behind what is queued ahead of it. A refusal the real submit would meet after planning (the
tenant's queued-items cap) is reported, not raised: the quote is still 200, with `accepted: false`.
"""
from __future__ import annotations

import time
from typing import Any


from producer.planning import jobs as planner
from producer.schemas import SubmitRequest
from producer.tenants import check_queue_room
from producer.uploads import upload_record
from sdq import contract
from sdq.config import Settings
from sdq.exceptions import TooManyRequests
from sdq.records import Item, Job, WorkerRecord
from sdq.scheduling import speed
from sdq.state.store import JobStore


def why_not(worker: WorkerRecord, job: Job, queue: str, pixels: int) -> list[str]:
    """Why `worker` (a capability record) cannot take items of `job` routed to `queue` (empty: it can)."""
    reasons: list[str] = []
    device, dtype = job.requires.get("device", "any"), job.requires.get("dtype")
    kind = worker.kind or contract.worker_kind(worker.device or "cpu")
    if device not in ("any", kind):
        reasons.append(f"device: the job needs a {device} worker, this one is {kind} ({worker.device})")
    if dtype and dtype != worker.dtype:
        reasons.append(f"dtype: the job needs {dtype}, this worker runs {worker.dtype}")
    if pixels > int(worker.max_pixels or 0):
        reasons.append(f"pixels: {pixels} per image exceeds this worker's limit of {worker.max_pixels}")
    if worker.models and job.model not in worker.models:
        reasons.append(f"model: {job.model} is not among the models this worker may load")
    if worker.pipelines and job.pipeline not in worker.pipelines:
        reasons.append(f"pipeline: this worker cannot run {job.pipeline}")
    need = planner.need_gb(job.requires, worker, pixels)
    if need and (worker.memory_total_gb or 0) < need:
        reasons.append(f"memory: needs {need:.1f} GB, this worker has {worker.memory_total_gb} GB")
    if not reasons and queue not in worker.queues:
        reasons.append(f"queue: this worker does not consume {queue}")
    return reasons


def _queue_quote(job: Job, queue: str, items: list[Item], workers: list[WorkerRecord],
                 ahead: int, now: float) -> dict[str, Any]:
    """One queue's share of the quote: able and unable workers, seconds per item, expected start and finish."""
    params = items[0].params
    pixels = max(w * h for w, h in (contract.item_size(job.pipeline, it.params) for it in items))
    able, unable = [], []
    for w in workers:
        reasons = why_not(w, job, queue, pixels)
        if reasons:
            unable.append({"name": w.name, "device": w.device, "reasons": reasons})
        else:
            able.append(w)
    rates = speed.fleet_rates(able, job.model, job.pipeline, params)
    work = sum(speed.item_work(job.pipeline, it.params) for it in items)
    out: dict[str, Any] = {
        "queue": queue, "items": len(items), "work_mpx_steps": round(work, 3),
        "able_workers": [{"name": w.name, "device": w.device, "dtype": w.dtype,
                          "seconds_per_item": round(speed.item_work(job.pipeline, params) / rates[w.name], 3),
                          "measured": speed.measured_rate(w, job.model, job.pipeline, params) is not None}
                         for w in able],
        "unable_workers": unable,
    }
    total_rate = sum(rates.values())
    if not total_rate:
        out.update(start_in_s=None, finish_in_s=None, expected_start=None, expected_finish=None)
        return out
    start = ahead * (work / len(items)) / total_rate  # the items ahead, counted as items like these
    finish = start + work / total_rate
    out.update(start_in_s=round(start, 1), finish_in_s=round(finish, 1),
               expected_start=round(now + start, 1), expected_finish=round(now + finish, 1))
    return out


def quote(req: SubmitRequest, settings: Settings, owner: str, jobs: JobStore) -> dict[str, Any]:
    """The dry run's answer for `req`: the job as it would be planned and where and when it would run."""
    # 1. Plan as a submit does (a bad request raises its usual 4xx here).
    plan = planner.plan_job(req, settings, owner, uploads=lambda key, field: upload_record(jobs, key, owner, field))
    job, now = plan.job, time.time()
    # 2. Refusals the real submit would meet after planning.
    refusals: list[dict[str, Any]] = []
    try:
        check_queue_room(jobs, owner, len(plan.items), settings.max_queued_items)
    except TooManyRequests as exc:
        refusals.append({"code": "too_many_requests", "field": exc.field, "message": str(exc),
                         "retry_after": exc.retry_after})
    # 3. Routing on paper: per queue, who could take the items, and when.
    workers = jobs.live_workers()
    routed = planner.route(plan, workers, settings.scheduling == "speed")
    job.created_at, job.counts = now, {"queued": len(plan.items)}
    ahead = jobs.queue_position(job) or 0
    queues = []
    for queue in sorted({c.queue for c in routed}):
        items = [it for c in routed if c.queue == queue for it in c.items]
        queues.append(_queue_quote(job, queue, items, workers, ahead, now))
    finishes = [q["finish_in_s"] for q in queues]
    runnable = all(f is not None for f in finishes)
    return {
        "dry_run": True, "accepted": not refusals, "refusals": refusals, "warnings": plan.warnings,
        "model": job.model, "pipeline": job.pipeline, "items": len(plan.items), "seed": job.seed,
        "work_mpx_steps": round(sum(q["work_mpx_steps"] for q in queues), 3), "items_ahead": ahead,
        "runnable_now": runnable, "finish_in_s": max(finishes) if runnable and finishes else None,
        "expected_finish": round(now + max(finishes), 1) if runnable and finishes else None,
        "queues": queues, "live_workers": len(workers),
    }
