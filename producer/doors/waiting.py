"""Waiting for a job inside a door's request: synchronous on top of the queue, without exhausting the producer.

The producer runs gevent: a waiting request is one greenlet subscribed to its job's event channel (the same
messages the SSE stream forwards) *before* it reads the job, so a `job.finished` published in between is not
lost; it reads the job again on `job.finished`, and every `RECHECK_S` in case a message was missed. Past the
bound it raises `JobPending` naming the job, which goes on and can be fetched through `/v1/jobs/{id}`. Each
door bounds how many requests a tenant may hold waiting (`door_slots`) and how long one waits.
"""
from __future__ import annotations

import time

from sdq import contract, defaults
from sdq.exceptions import SdqError
from sdq.records import Job
from sdq.state.limits import TenantSlots
from sdq.state.store import JobStore

RECHECK_S = 5.0
"""Seconds between reads of the job while no event says it ended (a missed message costs at most this)."""


class JobPending(SdqError):
    """The job did not end within the door's wait bound; it goes on."""

    def __init__(self, job_id: str, waited: float) -> None:
        super().__init__(f"job {job_id} has not finished after {waited:g} s; it goes on: fetch its images with "
                         f"GET /v1/jobs/{job_id}")
        self.job_id = job_id


def wait(jobs: JobStore, job_id: str, bound: float, recheck: float = RECHECK_S) -> Job:
    """The job once it has ended; JobPending after `bound` seconds."""
    deadline = time.monotonic() + bound
    events = jobs.job_events(job_id)
    try:
        while True:
            job = jobs.get(job_id)
            if job is None or job.state in contract.TERMINAL_STATES:
                return job
            until = min(deadline, time.monotonic() + recheck)
            while (left := until - time.monotonic()) > 0:
                raw = events.next_raw(left)
                if raw is not None and b'"job.finished"' in raw:
                    break
            if time.monotonic() >= deadline:
                job = jobs.get(job_id)
                if job is None or job.state in contract.TERMINAL_STATES:
                    return job
                raise JobPending(job_id, bound)
    finally:
        events.close()


def door_slots(jobs: JobStore, name: str, per_tenant: int, bound: float) -> TenantSlots:
    """The wait slots of door `name`: at most `per_tenant` waiting requests per tenant (429 past it), each
    slot released when its request ends, or expiring a minute after the longest wait if a producer dies."""
    return jobs.slots(f"{name}-waits", per_tenant, int(bound) + 60, defaults.STREAMS_FULL_RETRY_AFTER, "request")
