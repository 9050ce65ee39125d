"""State first, message second (issue 22 defect 2): every path that queues items records their
message in the outbox in the same Redis step, so a process killed between that step and the publish
(or a broker error there) strands nothing.

Each test takes the path's Redis step alone, exactly as the code does it, and publishes nothing: the
state a kill between the two steps leaves. With a live worker (fast timings, outbox lease 2 s) the job
then ends with every item `succeeded`, one object each and its manifest (`check_exact`): the
invariant "every item not in a final state has a live message or a live holder within
OUTBOX_LEASE + HEARTBEAT_INTERVAL seconds" (docs/RELIABILITY.md).
"""
from __future__ import annotations

import time
from typing import Iterator

import pytest

from producer.planning.jobs import plan_job
from producer.schemas import SubmitRequest
from sdq.records import WorkerRecord
from sdq.celery_app import chunks_of
from cli.client import Client
from cli.services import Stack
from sdq.config import Settings
from sdq.state import fleet, keys
from sdq.state.outbox import Outbox
from sdq.state.store import JobStore
from tests.test_faults import FAST_RECOVERY, Pool, check_exact

LEASE = 2
"""The stack's outbox lease, seconds."""


@pytest.fixture(scope="module")
def ostack(stack_factory) -> Iterator[Stack]:
    st = stack_factory("outbox", env={**FAST_RECOVERY, "SDQ_OUTBOX_LEASE": str(LEASE)})
    yield st
    st.stop()


@pytest.fixture(scope="module")
def one(ostack) -> Pool:
    pool = Pool(ostack, size=1)
    pool.fill()
    return pool


@pytest.fixture(scope="module")
def oclient(ostack) -> Client:
    return Client(ostack.env["SDQ_SERVER"])


@pytest.fixture
def jobs(one) -> JobStore:
    return JobStore(one.r)


def recorded(ostack: Stack, jobs: JobStore, n: int, tag: str, publish: bool = False) -> str:
    """A job planned as the producer plans it and recorded (submit's Redis step); unless `publish`, its
    outbox entry is left as a producer killed before enqueueing leaves it."""
    settings = Settings.from_env(ostack.env)
    req = SubmitRequest.model_validate({"model": "builtin:tiny-sd", "prompts": [f"{tag} {i}" for i in range(n)],
                                        "params": {"width": 64, "height": 64, "steps": 4, "seed": 5,
                                                   "cache": False}})
    plan = plan_job(req, settings, "")
    member = jobs.create(plan.job, plan.items, due=time.time() + LEASE)
    if publish:  # as if enqueued: the test sends nothing, so nothing is delivered either
        Outbox(jobs.redis).done(member)
    return plan.job.id


def held_by_ghost(jobs: JobStore, job_id: str, indices: list[int]) -> None:
    """`ghost` (a live worker record, so no reaper touches it) starts the items."""
    fleet.publish(jobs.redis, WorkerRecord(name="ghost", started_at=time.time() - 60, last_seen=time.time(),
                                           current_item={"job": job_id, "items": indices}))
    assert jobs.start_items(job_id, indices, "ghost", "cpu", "fp32") == indices


def test_submit_killed_between_record_and_enqueue(ostack, one, oclient, jobs, store):
    job_id = recorded(ostack, jobs, 3, "submit")
    check_exact(oclient, store, one.r, job_id, 3, timeout=120)


def test_retry_killed_between_requeue_and_publish(ostack, one, oclient, jobs, store):
    job_id = recorded(ostack, jobs, 2, "retry", publish=True)
    assert jobs.cancel(job_id) == ("cancelled", True)  # nothing was running: both items cancelled
    assert len(jobs.retry(job_id, due=time.time() + LEASE)) == 2  # POST /retry's Redis step alone
    check_exact(oclient, store, one.r, job_id, 2, timeout=120)


def test_retry_killed_after_its_first_slice_alone(ostack, one, oclient, jobs, store):
    """Issue 39 defect 2: a failed job's retry cut short after one slice's script (the producer killed,
    or a Redis error, before anything else). That one step re-queued the items, recorded their message
    and reopened the job (it used to leave the job `failed` and out of the active set, its re-queued
    items dropped as unwanted and counted against the tenant's cap for ever)."""
    owner = ""  # the client's tenant (no tokens on this stack); its other jobs here all end
    before = jobs.queued_items_of(owner)
    job_id = recorded(ostack, jobs, 2, "retry slice", publish=True)
    held_by_ghost(jobs, job_id, [0, 1])
    fleet.remove(jobs.redis, "ghost")
    assert not jobs.finish_item(job_id, 0, "failed", {"error": "boom"}, worker="ghost")
    assert jobs.finish_item(job_id, 1, "failed", {"error": "boom"}, worker="ghost")  # the job ended: failed
    assert jobs.get(job_id).state == "failed"
    raw = jobs.scripts["retry_slice"](keys=keys.job_script_keys(job_id), args=[job_id, time.time() + LEASE, 0, 1])
    assert len(raw) == 2 and jobs.queued_items_of(owner) == before + 2
    check_exact(oclient, store, one.r, job_id, 2, timeout=120)
    assert jobs.queued_items_of(owner) == before  # the tenant's count is right again
    assert jobs.redis.zscore(keys.ACTIVE_KEY, job_id) is None


def test_reaper_killed_between_requeue_and_publish(ostack, one, oclient, jobs, store):
    job_id = recorded(ostack, jobs, 2, "reap", publish=True)
    held_by_ghost(jobs, job_id, [0, 1])
    assert sorted(jobs.reap("ghost", due=time.time() + LEASE)) == [(job_id, 0), (job_id, 1)]
    fleet.remove(jobs.redis, "ghost")
    check_exact(oclient, store, one.r, job_id, 2, timeout=120)


def test_hand_off_killed_between_requeue_and_publish(ostack, one, oclient, jobs, store):
    job_id = recorded(ostack, jobs, 2, "hand-off", publish=True)
    held_by_ghost(jobs, job_id, [0, 1])
    assert jobs.hand_off(job_id, [0, 1], "ghost", "out of memory", due=time.time() + LEASE) == [(0, 1), (1, 1)]
    fleet.remove(jobs.redis, "ghost")
    doc = check_exact(oclient, store, one.r, job_id, 2, timeout=120)
    assert all(it["worker"] != "ghost" for it in doc["items"])


def test_pass_on_killed_between_taking_and_publishing(ostack, one, oclient, jobs, store):
    """A chunk passed on, taken from the outbox by a worker that died before publishing it."""
    job_id = recorded(ostack, jobs, 2, "pass-on", publish=True)
    job = jobs.get(job_id)
    [chunk] = chunks_of(job, jobs.all_items(job_id))
    outbox = Outbox(jobs.redis, LEASE)
    member = outbox.add_chunk(chunk.message(), time.time() + 3600)  # passed on (due later)...
    jobs.redis.zadd(keys.OUTBOX_KEY, {member: time.time() + LEASE}, xx=True)  # ...then taken, never published
    check_exact(oclient, store, one.r, job_id, 2, timeout=120)


def test_a_chunk_passed_on_again_while_its_copy_is_published_keeps_its_entry(jobs):
    """A worker receives a published copy of a passed-on chunk and passes it on again before the
    publisher has removed the copy's entry: the publisher's `done` must not remove the new entry (with
    one member per message it did, and the chunk's items stayed `queued` with no message for ever)."""
    outbox = Outbox(jobs.redis, LEASE)
    message = {"job": "outbox-aba", "queue": "sdq.any.any.p256", "items": [{"index": 0, "gen": 1}]}
    first = outbox.add_chunk(message, time.time() + 3600)  # taken and being published...
    again = outbox.add_chunk(message, time.time() + 3600)  # ...while its receiver passes it on again
    outbox.done(first)
    assert jobs.redis.zscore(keys.OUTBOX_KEY, again) is not None
    outbox.done(again)
