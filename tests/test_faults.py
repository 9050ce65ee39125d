"""Faults on real processes (issue 11): workers killed at each point of an item's life, a hung
worker, infrastructure errors, a poison item, a Redis restart and a producer restart.

The stack runs with short recovery timings (visibility timeout 4 s, heartbeat TTL 2 s, reaper
every 1 s, finalisation resent after 3 s, stall 8 s) so a dead worker's work is back within
seconds; production keeps the defaults. Workers run with `SDQ_DEBUG_FAULTS=1`: a test aims a rule
(`workers.testing.faults`) at them, waits for the marker key of the worker that hit it, then acts.
"""
from __future__ import annotations

import json
import signal
import threading
import time
from typing import Iterator

import pytest
import redis

from cli.client import Client
from cli.services import Service, Stack, wait_for
from sdq.state.keys import FINALIZE_KEY, events_channel
from sdq.state.store import JobStore
from tests.conftest import wait_job
from tests.support.records import undeclared_fields
from workers.running.thumbs import thumb_key

FAST_RECOVERY = {"SDQ_VISIBILITY_TIMEOUT": "4", "SDQ_HEARTBEAT_INTERVAL": "0.5", "SDQ_HEARTBEAT_TTL": "2",
                 "SDQ_REAPER_INTERVAL": "1", "SDQ_FINALIZE_RESEND": "3", "SDQ_STALL_TIMEOUT": "8",
                 "SDQ_S3_BACKOFF_CAP": "2"}
"""Recovery timings of the fault stacks (seconds)."""

WARM = ("--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd")
RULES = "sdq:debug:faults"
LONG = 150
"""Steps of an item a test pauses at `step`: that point is hit after a progress write, and progress is
written at most every `PROGRESS_INTERVAL` (0.25 s), so the item must outlast that on the fastest CPU
(30 steps of the tiny model take 0.2-0.4 s, too close: a fast machine finished them unseen)."""


def body(n: int = 3, steps: int = 4, prompt: str = "a lighthouse") -> dict:
    return {"model": "builtin:tiny-sd", "prompts": [f"{prompt} {i}" for i in range(n)],
            "params": {"width": 64, "height": 64, "steps": steps, "seed": 7, "cache": False}}  # made, never copied


class Pool:
    """The fault stack's workers: started in parallel, killed by name, replaced on demand."""

    def __init__(self, stack: Stack, size: int = 2) -> None:
        self.stack, self.size = stack, size
        self.r = redis.Redis.from_url(stack.env["SDQ_REDIS_URL"])
        self.workers: dict[str, Service] = {}
        self.started = 0

    def fill(self, *args: str) -> None:
        """Start workers until `size` are running, then wait until each joined the fleet."""
        new = {}
        while len(self.workers) + len(new) < self.size:
            self.started += 1
            name = f"f{self.started}"
            new[name] = self.stack.worker(name, *WARM, *args, wait=False, env={"SDQ_DEBUG_FAULTS": "1"})
        for name, svc in new.items():
            wait_for(lambda: self.r.exists(f"sdq:worker:{name}"), f"worker {name}", 180, svc.proc)
        self.workers.update(new)

    def hit(self, point: str, timeout: float = 120) -> str:
        """Wait until some worker hit the rule at `point`; returns its name."""
        found: list[str] = []

        def check() -> bool:
            found[:] = [n for n in self.workers if self.r.exists(f"sdq:debug:{n}:{point}")]
            return bool(found)

        wait_for(check, f"a worker at {point}", timeout)
        return found[0]

    def release(self, point: str) -> None:
        """Let every worker paused at `point` go on."""
        for key in self.r.scan_iter(f"sdq:debug:*:{point}"):
            self.r.delete(key)

    def kill(self, name: str) -> None:
        """SIGKILL: no clean shutdown, nothing handed back."""
        svc = self.workers.pop(name)
        svc.proc.send_signal(signal.SIGKILL)
        svc.proc.wait(10)


@pytest.fixture(scope="module")
def fstack(stack_factory) -> Iterator[Stack]:
    st = stack_factory("faults", env=FAST_RECOVERY)
    yield st
    st.stop()


@pytest.fixture(scope="module")
def pool(fstack) -> Pool:
    return Pool(fstack)


@pytest.fixture
def fleet(pool) -> Iterator[Pool]:
    """Two live fault-enabled workers, no rule set, no marker left."""
    pool.r.delete(RULES)
    for key in pool.r.scan_iter("sdq:debug:*"):
        pool.r.delete(key)
    pool.fill()
    yield pool
    pool.r.delete(RULES)


@pytest.fixture(scope="module")
def fclient(fstack) -> Client:
    return Client(fstack.env["SDQ_SERVER"])


def check_exact(fclient: Client, store, r: redis.Redis, job_id: str, n: int, timeout: float = 120) -> dict:
    """The job succeeded with exactly one object per item, exact counters and a manifest."""
    doc = wait_job(fclient, job_id, timeout)
    assert doc["state"] == "succeeded", [(it["state"], it["worker"], it["error"], it["attempts"]) for it in doc["items"]]
    assert doc["counts"] == {"queued": 0, "running": 0, "succeeded": n, "failed": 0, "cancelled": 0}
    job = JobStore(r).get(job_id)
    assert job.steps_done == job.steps_total, job
    assert undeclared_fields(r, job_id) == set()  # every field the workers kept is a declared one
    wait_for(lambda: r.zscore(FINALIZE_KEY, job_id) is None, "finalisation done", 60)
    keys = [k for k in store.keys(f"jobs/{job_id}/") if "/thumbs/" not in k]
    assert keys == [f"jobs/{job_id}/{i:05d}.png" for i in range(n)] + [f"jobs/{job_id}/manifest.json"]
    assert set(store.keys(f"jobs/{job_id}/thumbs/")) <= {thumb_key(job_id, i) for i in range(n)}
    return doc


@pytest.mark.parametrize("point", ["step", "upload", "claimed", "uploaded", "ack"])
def test_a_worker_killed_at_any_point_of_an_item_loses_nothing(fleet, fclient, store, point):
    """SIGKILL mid-item (after progress was counted), before the upload, after claiming the item and
    before storing it (issue 22: a killed run's claim strands nothing), between upload and recording
    it, and between recording and acknowledging: another worker finishes the job, exactly."""
    fleet.r.hset(RULES, point, "pause")
    job_id = fclient.submit(body(n=3, steps=LONG if point == "step" else 30))["id"]
    victim = fleet.hit(point)
    fleet.r.delete(RULES)
    fleet.kill(victim)
    fleet.release(point)  # another worker may have paused on another chunk of the job
    doc = check_exact(fclient, store, fleet.r, job_id, 3)
    if point == "ack":  # everything was recorded: nothing is made again
        assert all(it["attempts"] == 1 for it in doc["items"]), doc["items"]


def test_the_manifest_of_a_job_whose_finishing_worker_was_killed_is_written(fleet, fclient, store):
    """Defect 4: the worker dies right after the last item, before anything queued the finalisation."""
    fleet.r.hset(RULES, "finished", "pause")
    job_id = fclient.submit(body(n=2))["id"]
    victim = fleet.hit("finished")
    fleet.r.delete(RULES)
    fleet.kill(victim)
    fleet.release("finished")
    doc = check_exact(fclient, store, fleet.r, job_id, 2)
    assert all(it["attempts"] == 1 for it in doc["items"])  # nothing was made twice
    assert JobStore(fleet.r).get(job_id).manifest_key == f"jobs/{job_id}/manifest.json"


def test_an_infrastructure_error_requeues_the_chunk_instead_of_stranding_it(fleet, fclient, store):
    """Defect 2: a RuntimeError loading the model (outside the ModelError path) on one worker; the
    message is delivered again, not acknowledged, and the other worker makes the items."""
    broken = sorted(fleet.workers)[0]
    fleet.r.hset(f"{RULES}:{broken}", "load", "raise")
    try:
        job_id = fclient.submit(body(n=4))["id"]
        doc = check_exact(fclient, store, fleet.r, job_id, 4)
    finally:
        fleet.r.delete(f"{RULES}:{broken}")
    assert all(it["worker"] != broken for it in doc["items"])


def test_a_poison_item_fails_after_bounded_attempts_and_the_rest_completes(fleet, fclient, store):
    """The item whose batch raises every time is failed after 3 attempts with its error; the other
    items succeed; retry runs it again once the cause is gone."""
    fleet.r.hset(RULES, "batch", "raise@poison")
    req = {"model": "builtin:tiny-sd", "params": {"width": 64, "height": 64, "steps": 4, "seed": 3},
           "items": [{"prompt": "fine 0"}, {"prompt": "poison", "steps": 3}, {"prompt": "fine 2"}]}
    job_id = fclient.submit(req)["id"]
    doc = wait_job(fclient, job_id, 240)
    assert doc["state"] == "failed", doc
    fine0, poison, fine2 = doc["items"]
    assert fine0["state"] == fine2["state"] == "succeeded"
    assert poison["state"] == "failed" and poison["attempts"] == 3, poison
    assert "3 attempts" in poison["error"] and "debug fault at batch" in poison["error"], poison["error"]
    fleet.r.delete(RULES)
    assert fclient.retry(job_id)["requeued"] == 1
    doc = wait_job(fclient, job_id, 120)
    assert doc["state"] == "succeeded" and doc["items"][1]["attempts"] == 4


def test_a_hung_worker_loses_its_chunk_to_another(fleet, fclient, store):
    """Defect 7: the worker stops making progress (its heartbeat thread lives on): its lease is no
    longer renewed, so the other worker makes the item while the hung one is still stuck."""
    fleet.r.hset(RULES, "step", "pause")
    job_id = fclient.submit(body(n=1, steps=LONG))["id"]
    hung = fleet.hit("step")
    fleet.r.delete(RULES)
    try:
        doc = check_exact(fclient, store, fleet.r, job_id, 1, timeout=90)
        assert doc["items"][0]["worker"] != hung
        assert fleet.r.exists(f"sdq:debug:{hung}:step")  # still hung all along
        assert fleet.r.exists(f"sdq:worker:{hung}")  # and still in the fleet: no reaper involved
    finally:
        fleet.r.delete(f"sdq:debug:{hung}:step")  # let it go on: its late result changes nothing
    wait_for(lambda: not JobStore(fleet.r).get(job_id).counts.get("running"), "settled", 10)
    check_exact(fclient, store, fleet.r, job_id, 1)


def test_a_decode_that_outlasts_the_stall_timeout_is_not_a_hang(fleet, fclient, store):
    """After a call's last denoising step its VAE decode may take long (a large image or a video on a slow
    device): a worker paused there past the stall timeout (8 s here) does not say it is stalled (so it keeps
    renewing its lease); the item is made once (the idle worker may back it up meanwhile: a straggler, not a hang)."""
    fleet.r.hset(RULES, "decode", "pause")
    job_id = fclient.submit(body(n=1, steps=4))["id"]
    slow = fleet.hit("decode")
    fleet.r.delete(RULES)
    paused_at = time.time()
    records: list[dict] = []

    def past_the_stall_timeout() -> bool:  # the paused worker's heartbeats, until one comes 4 s after the timeout
        records.append(json.loads(fleet.r.get(f"sdq:worker:{slow}")))
        return records[-1]["last_seen"] > paused_at + float(FAST_RECOVERY["SDQ_STALL_TIMEOUT"]) + 4

    try:
        wait_for(past_the_stall_timeout, "heartbeats past the stall timeout", 60)
        assert not any(rec.get("stalled") for rec in records), "the worker said it was stalled while decoding"
    finally:
        fleet.r.delete(f"sdq:debug:{slow}:decode")
    check_exact(fclient, store, fleet.r, job_id, 1)


def test_a_redis_restart_mid_job_loses_nothing(fleet, fclient, store, fstack):
    """Defect 9: Redis stopped and started (AOF) mid-job: workers and producer reconnect, the job
    completes with exact counters."""
    fleet.r.hset(RULES, "step", "pause")
    job_id = fclient.submit(body(n=6, steps=LONG))["id"]
    fleet.hit("step")
    fleet.r.delete(RULES)
    redis_svc = next(s for s in fstack.services if s.name == "redis")
    fstack.restart(redis_svc)  # SIGTERM: the AOF is written; same port, same data directory
    wait_for(lambda: fleet.r.ping(), "redis back", 30)
    for key in fleet.r.scan_iter("sdq:debug:*:step"):  # the paused worker goes on after the restart
        fleet.r.delete(key)
    check_exact(fclient, store, fleet.r, job_id, 6, timeout=180)


def test_a_producer_restart_mid_job_keeps_status_and_events(fleet, fclient, fstack):
    """The producer is stateless: restarted mid-job, status and the event stream go on."""
    fleet.r.hset(RULES, "step", "pause")
    job_id = fclient.submit(body(n=2, steps=LONG))["id"]
    fleet.hit("step")
    producer = next(s for s in fstack.services if s.name == "producer")
    fstack.restart(producer)
    wait_for(lambda: fclient.job(job_id)["state"] == "running", "producer back", 30)
    events: list[str] = []

    def listen() -> None:
        for event, _ in fclient.events(job_id, read_timeout=60):
            events.append(event)
            if event == "job.finished":
                return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    channel = events_channel(job_id)  # the stream has subscribed before the worker goes on
    wait_for(lambda: dict(fleet.r.pubsub_numsub(channel)).get(channel.encode()), "event stream subscribed", 30)
    fleet.r.delete(RULES)
    for key in fleet.r.scan_iter("sdq:debug:*:step"):
        fleet.r.delete(key)
    t.join(90)
    assert "job.finished" in events and "item.finished" in events, events
    assert wait_job(fclient, job_id)["state"] == "succeeded"
