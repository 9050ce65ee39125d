"""Checks that every field the job store keeps is one `sdq.records` declares."""
from __future__ import annotations

import json

import redis

from sdq.records import Item, Job
from sdq.state.redisconn import text


def undeclared_fields(r: redis.Redis, job_id: str) -> set[str]:
    """Fields of the job's hash and item records that `Job`/`Item` do not declare (counters `c:*` aside)."""
    job = {text(k) for k in r.hkeys(f"sdq:job:{job_id}")}
    out = {f"job.{k}" for k in Job.undeclared(dict.fromkeys(job)) if not k.startswith("c:")}
    for raw in r.hvals(f"sdq:job:{job_id}:items"):
        out |= {f"item.{k}" for k in Item.undeclared(json.loads(raw))}
    return out
