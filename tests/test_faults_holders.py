"""Who may hold, store and record an item (issue 22 defects 1, 3 and 4): the job store's scripts on a
real redis-server, the fleet's records written as live workers write them."""
from __future__ import annotations

import time
import uuid

import pytest
import redis

from sdq.records import WorkerRecord
from sdq.records import Item, Job
from sdq.state import fleet, keys
from sdq.state.store import JobStore

from tests.test_faults_store import PARAMS, jobs, r  # noqa: F401 - the store tests' fixtures


def make_job(jobs: JobStore, n: int = 1) -> str:
    job_id = uuid.uuid4().hex
    items = [Item(index=i, prompt=f"p{i}", negative_prompt="", seed=i, params=PARAMS, steps=4) for i in range(n)]
    jobs.create(Job(id=job_id, owner="holders-test", state="queued", created_at=time.time(), n_items=n,
                    model="builtin:tiny-sd", pipeline="txt2img", params={"watermark": False},
                    requires={"device": "any"}), items)
    return job_id


def alive(r: redis.Redis, name: str, job_id: str | None = None, items: list[int] = (), started: float = 0.0,
          **extra) -> None:
    """Publish `name`'s fleet record as its heartbeat does (running `items` of `job_id`, if given)."""
    current = {"job": job_id, "items": list(items)} if job_id else None
    fleet.publish(r, WorkerRecord.from_record({"name": name, "started_at": started or time.time() - 60,
                                               "last_seen": time.time(), "current_item": current, **extra}))


def gone(r: redis.Redis, name: str) -> None:
    """`name` died: its record expired."""
    fleet.remove(r, name)


# -- defect 3: a duplicate delivery never steals an item from a live holder ----------------------------
def test_a_duplicate_delivery_leaves_the_item_to_its_live_holder(jobs, r):
    """The same attempt delivered twice (a `share` remainder and a requeued original): the second
    worker starts nothing while the holder is alive and running it, and no try is counted."""
    job_id = make_job(jobs)
    alive(r, "h-live", job_id, [0])
    assert jobs.start_items(job_id, [(0, 0)], "h-live", "cpu", "fp32") == [0]
    alive(r, "h-live", job_id, [0])  # the record written after the run started names the item
    for _ in range(3):  # three duplicates would have failed a healthy item (poison limit)
        assert jobs.start_items(job_id, [(0, 0)], "h-dup", "cpu", "fp32") == []
    it = jobs.all_items(job_id)[0]
    assert (it.state, it.worker, it.tries, it.attempts) == ("running", "h-live", 1, 1)
    started = jobs.start_run(job_id, [(0, 0)], "h-dup", "cpu", "fp32")
    assert (started.run, started.held) == ([], [0])  # the caller keeps a copy for later


@pytest.mark.parametrize("how", ["dead", "stalled", "restarted", "idle"])
def test_a_duplicate_delivery_takes_over_from_a_holder_that_is_gone(jobs, r, how):
    """A holder whose record expired, says it is stalled, belongs to a newer process of the same name,
    or no longer names the item: the item is taken over (the one path that recovers it)."""
    job_id = make_job(jobs)
    alive(r, "h-old", job_id, [0])
    assert jobs.start_items(job_id, [(0, 0)], "h-old", "cpu", "fp32") == [0]
    if how == "dead":
        gone(r, "h-old")
    elif how == "stalled":
        alive(r, "h-old", job_id, [0], stalled=True)
    elif how == "restarted":
        alive(r, "h-old", job_id, [0], started=time.time() + 1)
    else:
        alive(r, "h-old")
    assert jobs.start_items(job_id, [(0, 0)], "h-new", "cpu", "fp32") == [0]
    assert jobs.all_items(job_id)[0].worker == "h-new"


def test_a_runs_start_time_is_never_later_than_the_clock_a_record_after_it_reads(jobs, r):
    """The start time is kept to the millisecond rounded down: rounded to the nearest, a record written
    within half a millisecond after the start read as written before it, and its holder as not yet able to
    name the item (a takeover of a holder that had moved on was refused: a flaky run of the `idle` case)."""
    job_id = make_job(jobs)
    assert jobs.start_run(job_id, [(0, 0)], "h-clock", "cpu", "fp32", now=1000.0006).run == [0]
    assert jobs.all_items(job_id)[0].started_at == 1000.0


# -- defect 1: a claim lasts as long as its holder's run ------------------------------------------------
def test_a_claim_whose_holder_is_gone_is_taken_over(jobs, r):
    """A foreign claim (no run of the item), or a straggler backup that claimed and died before
    storing: the item's own run gets the claim and stores its result."""
    job_id = make_job(jobs)
    alive(r, "c-orig", job_id, [0])
    assert jobs.start_items(job_id, [(0, 0)], "c-orig", "cpu", "fp32") == [0]
    alive(r, "c-orig", job_id, [0])
    r.hset(keys.won_key(job_id), "0", "c-foreign")  # a claim by no run of the item
    assert jobs.claim_result(job_id, 0, "c-orig") == 1

    job_id = make_job(jobs)
    alive(r, "c-orig", job_id, [0])
    assert jobs.start_items(job_id, [(0, 0)], "c-orig", "cpu", "fp32") == [0]
    assert jobs.start_backup(job_id, 0, "c-back")
    alive(r, "c-back", job_id, [0])
    assert jobs.claim_result(job_id, 0, "c-back") == 1  # the backup claims first...
    assert jobs.claim_result(job_id, 0, "c-orig") == 2  # ...so the holder waits while the backup lives
    gone(r, "c-back")  # killed after claiming, before its PUT
    assert jobs.claim_result(job_id, 0, "c-orig") == 1
    assert jobs.claim_result(job_id, 0, "c-back") == 0  # it lost its claim for good


def test_a_backup_whose_upload_failed_neither_fails_the_item_nor_keeps_its_claim(jobs, r):
    """The backup's PUT failed (a non-transient error): it may not fail the item, and once its run is
    over (its record no longer names the item) the holder gets the claim."""
    job_id = make_job(jobs)
    alive(r, "b-orig", job_id, [0])
    assert jobs.start_items(job_id, [(0, 0)], "b-orig", "cpu", "fp32") == [0]
    assert jobs.start_backup(job_id, 0, "b-back")
    alive(r, "b-back", job_id, [0])
    assert jobs.claim_result(job_id, 0, "b-back") == 1
    assert jobs.record_outcome(job_id, 0, "failed", {"error": "upload failed"}, "b-back", 0) == -1
    alive(r, "b-back")  # the backup run ended
    assert jobs.claim_result(job_id, 0, "b-orig") == 1
    assert jobs.record_outcome(job_id, 0, "succeeded", {"key": "k"}, "b-orig", 0) == 1
    assert jobs.all_items(job_id)[0].state == "succeeded"


# -- defect 4: only the item's current run stores and records it ------------------------------------------
def test_a_stale_run_neither_stores_nor_records_another_runs_item(jobs, r):
    """A run reaped while alive, then superseded by another worker: it may not claim (store) the
    item, fail it, or record its result; the current run's outcome stands."""
    job_id = make_job(jobs)
    alive(r, "s-old", job_id, [0])
    assert jobs.start_items(job_id, [(0, 0)], "s-old", "cpu", "fp32") == [0]
    assert jobs.reap("s-old") == [(job_id, 0)]  # left the fleet for a moment (a partition)
    alive(r, "s-new", job_id, [0])
    assert jobs.start_items(job_id, [(0, 1)], "s-new", "cpu", "fp32") == [0]
    assert jobs.claim_result(job_id, 0, "s-old", 0) == 0
    assert jobs.record_outcome(job_id, 0, "failed", {"error": "late"}, "s-old", 0) == -1
    assert jobs.record_outcome(job_id, 0, "succeeded", {"key": "late"}, "s-old", 0) == -1
    assert jobs.claim_result(job_id, 0, "s-new", 1) == 1
    assert jobs.record_outcome(job_id, 0, "succeeded", {"key": "k", "worker": "s-new"}, "s-new", 1) == 1
    it = jobs.all_items(job_id)[0]
    assert (it.state, it.worker, it.key) == ("succeeded", "s-new", "k")


def test_the_loser_of_a_backed_up_item_records_nothing(jobs, r):
    """The backup claimed and stored first: the holder's late result (even a short run's) is
    neither stored nor recorded, so record and object agree."""
    job_id = make_job(jobs)
    alive(r, "l-orig", job_id, [0])
    assert jobs.start_items(job_id, [(0, 0)], "l-orig", "cpu", "fp32") == [0]
    assert jobs.start_backup(job_id, 0, "l-back")
    alive(r, "l-back", job_id, [0])
    assert jobs.claim_result(job_id, 0, "l-back") == 1
    assert jobs.record_outcome(job_id, 0, "succeeded", {"key": "kb", "worker": "l-back"}, "l-back", 0) == 1
    assert jobs.claim_result(job_id, 0, "l-orig") == 0
    assert jobs.record_outcome(job_id, 0, "succeeded", {"key": "ko", "worker": "l-orig"}, "l-orig", 0) == -1
    it = jobs.all_items(job_id)[0]
    assert (it.worker, it.key) == ("l-back", "kb")


def test_a_reaped_but_alive_worker_records_nothing_for_a_cancelled_item(jobs, r):
    """Reaped, then the job cancelled: the item is `cancelled`; the old run's claim and success are refused."""
    job_id = make_job(jobs)
    alive(r, "x-old", job_id, [0])
    assert jobs.start_items(job_id, [(0, 0)], "x-old", "cpu", "fp32") == [0]
    assert jobs.reap("x-old") == [(job_id, 0)]
    assert jobs.cancel(job_id) == ("cancelled", True)
    assert jobs.claim_result(job_id, 0, "x-old", 0) == 0
    assert jobs.record_outcome(job_id, 0, "succeeded", {"key": "late"}, "x-old", 0) == -1
    assert jobs.all_items(job_id)[0].state == "cancelled"


# -- defect 2: each re-queueing step records its message in the outbox, the writer removes it -----------
def test_every_requeue_records_its_message_and_the_writer_can_remove_it(jobs, r):
    """create, retry, reap and hand-off write an outbox entry in the same step; the member the writer
    computes (`intent`) is the one the script wrote, so publishing and removing leaves nothing behind."""
    from sdq.state.outbox import Outbox, intent

    outbox = Outbox(r)
    r.delete(keys.OUTBOX_KEY)
    job_id = make_job(jobs, n=3)
    assert r.zrange(keys.OUTBOX_KEY, 0, -1) == [intent(job_id, [(0, 0), (1, 0), (2, 0)]).encode()]
    r.delete(keys.OUTBOX_KEY)
    alive(r, "o-w", job_id, [0, 1, 2])
    assert jobs.start_items(job_id, [(0, 0), (1, 0), (2, 0)], "o-w", "cpu", "fp32") == [0, 1, 2]
    pairs = jobs.hand_off(job_id, [0], "o-w", "out of memory")
    outbox.done(intent(job_id, pairs))
    reaped = jobs.reap_run("o-w")
    outbox.done(intent(job_id, [(i, g) for _, i, g in reaped]))
    assert sorted(i for _, i, _ in reaped) == [1, 2] and r.zcard(keys.OUTBOX_KEY) == 0
    assert jobs.cancel(job_id) == ("cancelled", True)
    items = jobs.retry(job_id)
    assert r.zcard(keys.OUTBOX_KEY) == 1
    outbox.done(*jobs.retry_intents(job_id, items))
    assert r.zcard(keys.OUTBOX_KEY) == 0


# -- defect 6: the webhook flag is set only once the webhook was sent --------------------------------------
class BrokerDownOnce:
    """A Celery app whose first `send_task` fails like a broker outage; records the sends after it."""

    def __init__(self) -> None:
        self.calls, self.sent = 0, []

    def send_task(self, name: str, kwargs: dict, queue: str) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("broker down")
        self.sent.append((name, kwargs["job_id"]))


def test_a_webhook_whose_send_failed_is_sent_by_the_next_finalisation(jobs, r, store):
    from workers.finishing.finalize import finalize_job

    job_id = make_job(jobs)
    jobs.set_field(job_id, webhook_url="https://hooks.example/sdq")
    alive(r, "wh", job_id, [0])
    assert jobs.start_items(job_id, [(0, 0)], "wh", "cpu", "fp32") == [0]
    assert jobs.finish_item(job_id, 0, "succeeded", {"key": "k"})
    celery = BrokerDownOnce()
    with pytest.raises(ConnectionError):
        finalize_job(jobs, store, job_id, celery)  # the finalize task fails: Celery runs it again
    finalize_job(jobs, store, job_id, celery)
    assert celery.sent == [("sdq.webhook", job_id)]
    finalize_job(jobs, store, job_id, celery)  # finalised again (a resend): queued once per job end
    assert celery.sent == [("sdq.webhook", job_id)]
