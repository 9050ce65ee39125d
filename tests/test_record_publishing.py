"""When a busy worker publishes its capability record: at each chunk's start and end, and for a batch only
when it may need a straggler backup (expected to run at least `BACKUP_MIN_RUN_S`, or still running by then).
A batch of short items is not published at all: every publication wakes the idle workers' lookouts."""
from __future__ import annotations

import time
from typing import Iterator

import pytest
import redis

from cli.client import Client
from sdq.records import WorkerRecord
from sdq.state import fleet
from sdq.state.keys import FLEET_EVENTS_CHANNEL
from sdq.state.store import JobStore
from tests.conftest import wait_job, wait_until
from workers.fleet.capability import Heartbeat


class Doing:
    """Stands in for `workers.fleet.capability.Capability`: the record says what `current` holds now."""

    name = "hb"

    def __init__(self) -> None:
        self.current: dict | None = None

    def record(self) -> WorkerRecord:
        return WorkerRecord(name=self.name, current_item=dict(self.current) if self.current else None,
                            last_seen=time.time())


def events(pubsub, name: str) -> list[float]:
    """Arrival times of the fleet events `name` sent that are waiting on `pubsub`."""
    out = []
    while (msg := pubsub.get_message(timeout=0.05)) is not None:
        if msg["data"] in (name, name.encode()):
            out.append(time.monotonic())
    return out


@pytest.fixture(scope="module")
def rstack(stack_factory):
    return stack_factory("records")


@pytest.fixture
def listening(rstack) -> Iterator:
    r = redis.Redis.from_url(rstack.env["SDQ_REDIS_URL"])
    pubsub = JobStore(r).fleet_events()
    pubsub.get_message(timeout=1.0)  # reads the subscribe reply (not returned): subscribed from here on
    wait_until(lambda: r.pubsub_numsub(FLEET_EVENTS_CHANNEL)[0][1] >= 1, "subscribed", 10)
    yield r, pubsub
    pubsub.close()


def test_a_deferred_record_is_published_at_its_time_unless_published_before(listening):
    r, pubsub = listening
    doing = Doing()
    beat = Heartbeat(JobStore(r), doing, interval=3600.0)  # no regular beat during the test
    beat.start()
    try:
        # 1. Short batches one after another: each moves the due time on; the chunk's end publishes once.
        for i in range(10):
            doing.current = {"job": "j", "running": [i], "since": time.time()}
            beat.publish_by(time.time() + 5.0)
            time.sleep(0.02)  # the "batch"
        doing.current = None
        beat.publish()
        wait_until(lambda: fleet.live_workers(r), "the record", 10)
        assert len(events(pubsub, "hb")) == 1
        # 2. A batch still running at its due time is published then, naming it.
        doing.current = {"job": "j", "running": [10], "since": time.time()}
        asked = time.monotonic()
        beat.publish_by(time.time() + 0.3)
        got = wait_until(lambda: events(pubsub, "hb"), "the deferred record", 10)
        assert len(got) == 1 and got[0] - asked >= 0.3
        assert fleet.live_workers(r)[0].current_item["running"] == [10]
        # 3. Nothing due any more: no further publication (the regular beat is an hour away).
        assert not events(pubsub, "hb") and beat._due is None
    finally:
        beat.stop()
        beat.join(10)
    assert not beat.is_alive()


def test_a_job_of_short_items_publishes_the_record_per_chunk_not_per_item(rstack, listening):
    r, pubsub = listening
    rstack.worker("w-rec", "--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd")
    client = Client(rstack.env["SDQ_SERVER"])
    body = {"params": {"width": 64, "height": 64, "steps": 1}}
    warm = client.submit({**body, "prompts": [f"warm {i}" for i in range(4)]})  # the worker learns its speed
    assert wait_job(client, warm["id"], timeout=180)["state"] == "succeeded"
    events(pubsub, "w-rec")
    n = 24
    job = client.submit({**body, "prompts": [f"short {i}" for i in range(n)]})
    doc = wait_job(client, job["id"], timeout=180)
    assert doc["state"] == "succeeded"
    chunks = len({(it["worker"], it["started_at"]) for it in doc["items"]})
    sent = wait_until(lambda: events(pubsub, "w-rec"), "the idle record", 10)
    sent += events(pubsub, "w-rec")
    # two per chunk (its items claimed, idle again), a heartbeat, and some items that ran past 0.5 s on a busy
    # machine (each published then); a record per item would be `n` more
    assert len(sent) <= 2 * chunks + n // 3, (len(sent), chunks)
