"""Claims on real workers (issue 22 defects 1 and 4, issue 39 defect 10): a claim left by a run that is gone
does not strand the item, and a run reaped while alive stores and caches nothing for its cancelled item, even
when it had claimed the item before it was superseded."""
from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from cli.client import Client
from cli.services import Stack, wait_for
from sdq.state import keys
from sdq.state.store import JobStore
from tests.test_faults import FAST_RECOVERY, RULES, Pool, check_exact


@pytest.fixture(scope="module")
def cstack(stack_factory) -> Iterator[Stack]:
    st = stack_factory("claims", env=FAST_RECOVERY)
    yield st
    st.stop()


@pytest.fixture(scope="module")
def one(cstack) -> Iterator[Pool]:
    """One live fault-enabled worker, no rule set, no marker left."""
    pool = Pool(cstack, size=1)
    pool.fill()
    yield pool
    pool.r.delete(RULES)


@pytest.fixture(scope="module")
def cclient(cstack) -> Client:
    return Client(cstack.env["SDQ_SERVER"])


def body(steps: int, cache: bool = False, prompt: str = "a harbour") -> dict:
    return {"model": "builtin:tiny-sd", "prompts": [prompt],
            "params": {"width": 64, "height": 64, "steps": steps, "seed": 11, "cache": cache}}


def test_a_claim_left_by_a_run_that_is_gone_does_not_strand_the_item(one, cclient, store):
    """A claim recorded for the item by no live run of it (a backup killed after claiming, before its
    PUT): the item's own run takes the claim over and stores its result; the job ends."""
    one.r.hset(RULES, "batch", "pause")
    job_id = cclient.submit(body(steps=40))["id"]  # long enough that every version of the runner claims
    worker = one.hit("batch")
    one.r.delete(RULES)
    one.r.hset(keys.won_key(job_id), "0", "gone-backup")
    one.release("batch")
    doc = check_exact(cclient, store, one.r, job_id, 1, timeout=90)
    assert doc["items"][0]["worker"] == worker and doc["items"][0]["attempts"] == 1


def test_a_worker_reaped_while_alive_stores_nothing_for_its_cancelled_item(one, cclient, store):
    """The worker left the fleet for a moment mid-item (reaped: a new attempt), then the job was
    cancelled: when it goes on, its image is neither stored nor registered in the result cache."""
    _reap_and_cancel_at(one, cclient, store, "upload")  # made, not stored yet: its progress writes are over


def test_a_run_superseded_after_its_claim_stores_nothing_for_its_cancelled_item(one, cclient, store):
    """The run claimed its item, then was superseded (reaped while alive: a new attempt) and the job was
    cancelled, all before its PUT: the claim is asked again right before the PUT, so the cancelled item
    gets no object and no result-cache entry."""
    _reap_and_cancel_at(one, cclient, store, "claimed")  # claimed and encoded, not stored yet


def _reap_and_cancel_at(one, cclient, store, point: str) -> None:
    """Pause the run at fault point `point`, reap its worker and cancel the job, let it go on: the cancelled
    item ends with no object and no result-cache entry."""
    jobs = JobStore(one.r)
    one.r.hset(RULES, point, "pause")
    job_id = cclient.submit(body(steps=2, cache=True, prompt=f"{point} {uuid.uuid4().hex}"))["id"]
    worker = one.hit(point)
    one.r.delete(RULES)
    assert jobs.reap(worker) == [(job_id, 0)]
    assert jobs.cancel(job_id) == ("cancelled", True)
    one.release(point)

    # the run is over once its message is acknowledged (its uploads are awaited before that)
    wait_for(lambda: one.r.zcard(keys.UNACKED_INDEX_KEY) == 0, "the reaped worker's message acknowledged", 90)
    assert jobs.all_items(job_id)[0].state == "cancelled"
    assert store.keys(f"jobs/{job_id}/") in ([], [f"jobs/{job_id}/manifest.json"])
    cached = [one.r.get(k) for k in one.r.scan_iter(keys.RESULT_INDEX_PREFIX + "*")]
    assert not [c for c in cached if c and job_id.encode() in c]
