"""Attempt identity, poison limit, exact counters, the reaper and sliced cancel/retry: JobStore and
the reaper on a real redis-server (no workers needed; issue 11 defects 2, 5 and 9, issue 12 item 9)."""
from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Iterator

import pytest
import redis

from sdq.records import WorkerRecord
from sdq import contract
from sdq.celery_app import make_celery
from cli.services import Stack, free_port
from sdq.records import Item, Job
from sdq.state import fleet
from sdq.state.jobs import SLICE
from sdq.state.keys import FINALIZE_KEY
from sdq.state.store import JobStore
from tests.support.records import undeclared_fields

PARAMS = {"width": 64, "height": 64, "steps": 4, "guidance_scale": 7.5, "scheduler": "pndm", "strength": 0.8,
          "noise_level": 20}


@pytest.fixture(scope="module")
def r(workdir, request) -> Iterator[redis.Redis]:
    """A private redis-server for the module that uses it (tests/test_faults_holders.py shares this)."""
    d = workdir / request.module.__name__.rpartition(".")[2]
    d.mkdir(exist_ok=True)
    st = Stack(d)
    url = st.redis(free_port())
    yield redis.Redis.from_url(url)
    st.stop()


@pytest.fixture
def jobs(r) -> JobStore:
    return JobStore(r)


def make_job(jobs: JobStore, n: int = 2, steps: int = 4) -> str:
    job_id = uuid.uuid4().hex
    items = [Item(index=i, prompt=f"p{i}", negative_prompt="", seed=i, params={**PARAMS, "steps": steps},
                  steps=steps) for i in range(n)]
    jobs.create(Job(id=job_id, owner="store-test", state="queued", created_at=time.time(), n_items=n,
                    model="builtin:tiny-sd", pipeline="txt2img", params={"watermark": False},
                    requires={"device": "any"}), items)
    return job_id


def test_a_stale_message_after_cancel_and_retry_starts_nothing(jobs):
    """Defect 5: the cancelled items' old messages are still queued when retry publishes new ones."""
    job_id = make_job(jobs)
    assert jobs.cancel(job_id) == ("cancelled", True)
    requeued = jobs.retry(job_id)
    assert sorted((it.index, it.gen) for it in requeued) == [(0, 1), (1, 1)]
    assert jobs.start_items(job_id, [(0, 0), (1, 0)], "w-old", "cpu", "fp32") == []  # the old attempt's message
    assert jobs.start_items(job_id, [(0, 1), (1, 1)], "w-new", "cpu", "fp32") == [0, 1]
    # the old message delivered again while the new attempt runs: still nothing
    assert jobs.start_items(job_id, [(0, 0)], "w-old", "cpu", "fp32") == []
    assert all(it.attempts == 1 and it.worker == "w-new" for it in jobs.all_items(job_id))


def test_redelivered_item_does_not_count_its_lost_progress_twice(jobs):
    """Defect 9: steps_done stays exact (never above steps_total) after a lost run is redelivered."""
    job_id = make_job(jobs, n=1, steps=10)
    assert jobs.start_items(job_id, [(0, 0)], "w-dead", "cpu", "fp32") == [0]
    jobs.add_progress(job_id, [0], 7, 7, 10, "w-dead")  # the first run got 7 steps in, then was lost
    assert jobs.start_items(job_id, [(0, 0)], "w-next", "cpu", "fp32") == [0]  # redelivered
    assert jobs.get(job_id).steps_done == 0
    jobs.add_progress(job_id, [0], 2, 9, 10, "w-dead")  # the lost run was only hung: it counts nothing now
    jobs.add_progress(job_id, [0], 4, 4, 10, "w-next")
    assert jobs.finish_item(job_id, 0, "succeeded", {"key": "k"})
    job = jobs.get(job_id)
    assert (job.steps_done, job.steps_total, job.state) == (10, 10, "succeeded")


def test_an_item_tried_max_attempts_times_is_failed_with_its_last_error(jobs):
    """Poison item: each delivery counts; the next one after the limit fails it, naming the error."""
    job_id = make_job(jobs, n=1)
    for attempt in range(3):
        assert jobs.start_items(job_id, [(0, 0)], f"w{attempt}", "cpu", "fp32", max_attempts=3) == [0]
        assert jobs.release(job_id, [0], f"w{attempt}", "RuntimeError: CUDA error: misaligned address") == 1
    ended: list[str] = []
    assert jobs.start_items(job_id, [(0, 0)], "w3", "cpu", "fp32", ended.append, max_attempts=3) == []
    item = jobs.all_items(job_id)[0]
    assert item.state == "failed" and "3 attempts" in item.error and "misaligned address" in item.error
    assert ended == [job_id] and jobs.get(job_id).state == "failed"
    # retry runs it again, counting afresh
    assert [it.index for it in jobs.retry(job_id)] == [0]
    assert jobs.start_items(job_id, [(0, 1)], "w4", "cpu", "fp32", max_attempts=3) == [0]


def test_a_job_that_ends_is_recorded_to_finalise_in_the_same_step(jobs, r):
    """Defect 4: the step that ends a job records it "to finalise", whoever then dies."""
    job_id = make_job(jobs, n=1)
    assert jobs.start_items(job_id, [(0, 0)], "w", "cpu", "fp32") == [0]
    assert r.zscore(FINALIZE_KEY, job_id) is None
    assert jobs.finish_item(job_id, 0, "succeeded", {"key": "k"})
    assert r.zscore(FINALIZE_KEY, job_id) is not None
    assert job_id in jobs.finalize_due(-1)
    jobs.finalized(job_id)
    assert r.zscore(FINALIZE_KEY, job_id) is None


def test_the_reaper_requeues_the_running_items_of_a_worker_that_left_the_fleet(jobs, r):
    """Defect 2: items `running` on a dead worker whose message is gone are queued and published again."""
    from workers.fleet.reaper import Reaper

    url = r.connection_pool.connection_kwargs
    celery = make_celery(f"redis://{url['host']}:{url['port']}/0")
    job_id = make_job(jobs, n=2)
    fleet.publish(r, WorkerRecord(name="w-live"), ttl=30)
    assert jobs.start_items(job_id, [(0, 0)], "w-gone", "cpu", "fp32") == [0]
    assert jobs.start_items(job_id, [(1, 0)], "w-live", "cpu", "fp32") == [1]
    finalized: list[str] = []
    queue = contract.queue_for("any", None, 64 * 64)

    def queued() -> list[bytes]:  # kombu keeps one list per priority: NAME and NAME\x06\x16<digit>
        return [m for key in r.keys(queue.encode() + b"*") for m in r.lrange(key, 0, -1)]

    Reaper(jobs, celery, finalized.append, interval=0).reap()
    items = {it.index: it for it in jobs.all_items(job_id)}
    assert (items[0].state, items[0].gen) == ("queued", 1)  # a new attempt: the old message is stale
    assert items[1].state == "running"  # its worker is alive
    messages = [json.loads(base64.b64decode(json.loads(m)["body"]))[1]["chunk"] for m in queued()]
    mine = [c for c in messages if c["job"] == job_id]
    assert len(mine) == 1  # (items the earlier tests left running on workers that never lived are reaped too)
    chunk = mine[0]
    assert [(it["index"], it["gen"]) for it in chunk["items"]] == [(0, 1)]
    assert jobs.running_workers() == ["w-live"]
    fleet.remove(r, "w-live")


def test_reaping_takes_at_most_limit_items_and_settles_those_of_a_cancelled_job(jobs, r):
    """The reap script gets the dead worker's running items (and their jobs' keys) from the caller:
    at most `limit` per call, a cancelled job's items end cancelled (the job ends and is recorded to
    finalise), and the worker leaves the running index once nothing of it is left."""
    worker = f"w-dead-{uuid.uuid4().hex[:6]}"
    kept, cancelled = make_job(jobs, n=2), make_job(jobs, n=2)
    assert jobs.start_items(kept, [(0, 0), (1, 0)], worker, "cpu", "fp32") == [0, 1]
    assert jobs.start_items(cancelled, [(0, 0), (1, 0)], worker, "cpu", "fp32") == [0, 1]
    assert jobs.cancel(cancelled) == ("running", False)  # running items only see the flag
    reaped = jobs.reap(worker, limit=3)
    assert r.scard(f"sdq:running:{worker}") == 1 and worker in jobs.running_workers()
    reaped += jobs.reap(worker, limit=3)
    assert r.scard(f"sdq:running:{worker}") == 0 and worker not in jobs.running_workers()
    assert sorted(reaped) == [(kept, 0), (kept, 1)]
    assert [(it.state, it.gen) for it in jobs.all_items(kept)] == [("queued", 1), ("queued", 1)]
    assert [it.state for it in jobs.all_items(cancelled)] == ["cancelled", "cancelled"]
    assert jobs.get(cancelled).state == "cancelled" and r.zscore(FINALIZE_KEY, cancelled) is not None
    assert jobs.get(kept).counts["queued"] == 2 and jobs.get(kept).state == "running"
    assert jobs.reap(worker, limit=2) == []


@pytest.mark.parametrize("op", ["cancel", "retry"])
def test_cancel_and_retry_of_a_big_job_run_in_bounded_slices(jobs, r, op):
    """Issue 12 item 9: no single script decodes every item of a big job (Redis is also the broker)."""
    n = 3 * SLICE + 7
    job_id = make_job(jobs, n=n)
    if op == "retry":
        jobs.cancel(job_id)
    r.config_set("slowlog-log-slower-than", 0)
    r.config_set("slowlog-max-len", 100000)
    r.slowlog_reset()
    try:
        if op == "cancel":
            assert jobs.cancel(job_id) == ("cancelled", True)
        else:
            assert len(jobs.retry(job_id)) == n
        calls = [e for e in r.slowlog_get(100000) if e["command"].split(b" ")[0].upper() in (b"EVALSHA", b"EVAL")]
    finally:
        r.config_set("slowlog-log-slower-than", 10000)
    assert len(calls) >= n // SLICE  # one short script per slice of items
    counts = jobs.get(job_id).counts
    assert counts["cancelled" if op == "cancel" else "queued"] == n


def test_every_field_the_store_scripts_keep_is_declared(jobs, r):
    """The typed contract: whatever the Lua scripts write into a job or item is a declared field."""
    job_id = make_job(jobs, n=4)
    assert jobs.start_items(job_id, [(0, 0), (1, 0), (2, 0)], "w1", "cpu", "fp32") == [0, 1, 2]
    jobs.add_progress(job_id, [0, 1, 2], 1, 1, 4, "w1")
    assert jobs.release(job_id, [2], "w1", "ConnectionError: gone") == 1
    assert jobs.hand_off(job_id, [1], "w1", "out of memory") == [(1, 1)]
    assert jobs.start_backup(job_id, 0, "w2") and jobs.claim_result(job_id, 0, "w2")
    jobs.finish_item(job_id, 0, "succeeded", {"worker": "w2", "key": "k", "bytes": 1, "duration_s": 0.5,
                                              "timings": {"generate": 0.4}, "batch": 1, "nsfw": False})
    jobs.cancel(job_id)
    assert jobs.retry(job_id)
    jobs.set_field(job_id, manifest_key="m", grid_key="g", webhook_delivered_at=time.time())
    assert jobs.claim_webhook(job_id)
    assert undeclared_fields(r, job_id) == set()
    assert Item.undeclared({"index": 0, "surprise": 1}) == {"surprise"}  # the check itself can fail


def test_a_start_repeated_after_a_lost_reply_starts_nothing_twice(jobs):
    """Issue 39 defect 10: `retry_redis` repeats a start whose reply was lost; the repeat counted one
    more try and attempt, and recorded the worker as having stopped while running the item."""
    job_id = make_job(jobs, n=2)
    now = time.time()
    first = jobs.start_run(job_id, [(0, 0), (1, 0)], "w-repeat", "cpu", "fp32", now=now)
    again = jobs.start_run(job_id, [(0, 0), (1, 0)], "w-repeat", "cpu", "fp32", now=now)
    assert first.run == again.run == [0, 1] and again.held == []
    for it in jobs.item_records(job_id, [0, 1]):
        assert (it.state, it.attempts, it.tries, it.last_error) == ("running", 1, 1, None), it
    assert jobs.get(job_id).counts["running"] == 2
    later = jobs.start_run(job_id, [(0, 0)], "w-repeat", "cpu", "fp32", now=now + 5)  # a real redelivery
    assert later.run == [0] and jobs.item_records(job_id, [0])[0].attempts == 2


def test_the_outbox_is_taken_fairly_across_tenants(jobs, r):
    """Issue 39 defect 4: one tenant's many due entries took every heartbeat's flush capacity (100)
    while another tenant's recovery waited behind them."""
    from sdq.state.keys import OUTBOX_KEY, job_key
    from sdq.state.outbox import Outbox, intent

    flood, other = make_job(jobs, n=1), make_job(jobs, n=1)
    r.hset(job_key(flood), "owner", "flooder")
    r.hset(job_key(other), "owner", "patient")
    r.delete(OUTBOX_KEY)
    now = time.time()
    r.zadd(OUTBOX_KEY, {intent(flood, [(i, 0)]): now - 100 + i * 0.01 for i in range(300)})  # due first
    r.zadd(OUTBOX_KEY, {intent(other, [(i, 0)]): now - 10 for i in range(3)})
    taken = Outbox(r).take_due(limit=100)
    assert len(taken) == 100 and sum(m.startswith(other) for m in taken) == 3, taken[-5:]
    assert taken[:2] == [intent(flood, [(0, 0)]), intent(other, [(0, 0)])]  # one per tenant in turn
    r.delete(OUTBOX_KEY)


def test_parked_chunks_are_rechecked_when_the_fleet_changes_and_when_the_recheck_is_due(jobs, r):
    """The parked chunks' fleet marker: one caller sees a change; an unchanged fleet keeps its expiry."""
    from sdq.state.keys import PARKED_FLEET_KEY
    from sdq.state.outbox import Outbox

    outbox = Outbox(r)
    r.delete(PARKED_FLEET_KEY)
    assert outbox.fleet_changed("fleet-a", recheck=60) and not outbox.fleet_changed("fleet-a", recheck=60)
    r.expire(PARKED_FLEET_KEY, 30)
    assert not outbox.fleet_changed("fleet-a", recheck=60) and r.ttl(PARKED_FLEET_KEY) <= 30  # not pushed back
    assert outbox.fleet_changed("fleet-b", recheck=60)
    r.delete(PARKED_FLEET_KEY)
    assert outbox.fleet_changed("fleet-b", recheck=60)  # expired: checked again
