"""A mixed fleet for real: two CPU workers pinned to different cores, one honestly slowed down by
busy processes pinned to its core. Speed measured and published; the slow worker takes a share, not
most of a batch, and the batch ends sooner than on the fast worker alone and than under the count
policy (`SDQ_SCHEDULING=count`); a straggler's items, the one it is making and the one it claimed
and has not started, get backup runs on the idle fast worker, which win, and the original runs stop.

Wall times are compared in units of the fast worker's own time per item in the same job (the
machine's speed drifts between jobs; a job's makespan and its items' times move together)."""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

import pytest
import redis

from cli.client import Client
from sdq.records import WorkerRecord
from sdq.scheduling import scheduling, speed
from tests.conftest import wait_job, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.serial,
    pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is needed to pin workers"),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to pin a fast and a slow worker"),
]

PARAMS = {"width": 128, "height": 128, "steps": 16}
HOGS = 1
"""Busy processes sharing the slow worker's core (in sessions of their own, as the worker shares its
session's slice with the test's other processes): it runs at about a third of the fast one here."""

WORKER = ("--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd")
FAST = ("--max-batch", "16")
"""The fast worker batches like a GPU: chunks come in sixteens, so the slow one (one image per call)
holds items it has not started, and the count policy hands it sixteen at a time."""
TIMINGS = {"SDQ_HEARTBEAT_INTERVAL": "0.5", "SDQ_DEBUG_FAULTS": "1"}  # idle workers look for stragglers twice a second


@pytest.fixture(scope="module")
def hogs():
    """CPU-bound processes pinned to core 1, stopped at the end. Each in its own session: with the
    kernel's autogroup scheduling, processes of one session share one slice of the core."""
    procs = [subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", "while True: pass"], start_new_session=True)
             for _ in range(HOGS)]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def start(stack, name: str, core: int):
    return stack.worker(name, *WORKER, *(FAST if name == "fast" else ()), prefix=("taskset", "-c", str(core)),
                        env=TIMINGS)


def run_job(client: Client, n: int, seed: int) -> dict:
    """Submit `n` items (distinct seeds: nothing answered from stored results) and wait for the job."""
    doc = wait_job(client, client.submit({"prompts": [f"mixed fleet {seed} {i}" for i in range(n)],
                                          "params": {**PARAMS, "seed": seed}})["id"], 300)
    assert doc["state"] == "succeeded", doc
    return doc


def makespan(client: Client, n: int, seed: int) -> tuple[float, dict]:
    """Run a job of `n` items: its time from creation to end in fast-worker item times (as the server
    recorded them), and the job."""
    doc = run_job(client, n, seed)
    per_item = statistics.median(it["duration_s"] for it in doc["items"] if it["worker"] == "fast")
    return (doc["finished_at"] - doc["created_at"]) / per_item, doc


def record(client: Client, name: str) -> dict:
    return next((w for w in client.workers() if w["name"] == name), {})


def rate(client: Client, name: str) -> float | None:
    return speed.measured_rate(WorkerRecord.from_record(record(client, name)), "builtin:tiny-sd", "txt2img", PARAMS)


@contextmanager
def fast_held(client: Client, r: redis.Redis, seed: int) -> Iterator[None]:
    """The fast worker held on an urgent job for the block (a fault rule pauses it), so the slow worker
    claims whatever is submitted meanwhile: a faster worker busy with another job does not count."""
    r.hset("sdq:debug:faults:fast", "batch", "pause@urgent")
    urgent = client.submit({"prompts": ["urgent"], "params": {**PARAMS, "seed": seed}, "priority": 9})
    wait_until(lambda: r.exists("sdq:debug:fast:batch"), "the fast worker busy with the urgent job", 60)
    wait_until(lambda: (record(client, "fast").get("current_item") or {}).get("job") == urgent["id"],
               "the fast worker's record showing the urgent job", 60)
    yield
    r.hdel("sdq:debug:faults:fast", "batch")
    r.delete("sdq:debug:fast:batch")  # the fast worker goes on, then is idle
    assert wait_job(client, urgent["id"])["state"] == "succeeded"


def claimed_by_slow(client: Client, body: dict) -> str:
    job = client.submit(body)["id"]
    wait_until(lambda: all(it["worker"] == "slow" for it in client.job(job)["items"]), "the slow worker claimed it", 60)
    return job


def test_a_mixed_fleet_shares_by_speed_and_backs_up_stragglers(stack_factory, hogs):
    n = 32
    # 1. The fast worker alone.
    st = stack_factory("mixed-speed")
    client = Client(st.env["SDQ_SERVER"])
    r = redis.Redis.from_url(st.env["SDQ_REDIS_URL"])
    start(st, "fast", 0)
    run_job(client, 2, 1)  # warm
    alone, _ = makespan(client, n, 10)
    # 2. With the slow worker, speed-aware (the default): both publish their measured speed.
    with fast_held(client, r, 12):  # before the slow worker starts: it cannot take the urgent job
        slow_svc = start(st, "slow", 1)
        measure = claimed_by_slow(client, {"prompts": ["measure the slow worker", "and again"],
                                           "params": {**PARAMS, "seed": 11}})
        assert wait_job(client, measure)["state"] == "succeeded"
    wait_until(lambda: rate(client, "slow"), "the slow worker's published speed", 30)
    fast, slow = rate(client, "fast"), rate(client, "slow")
    # about a third on a quiet machine; at least clearly slower (the policy's own threshold) on a busy one
    assert slow * scheduling.FASTER < fast, f"the slow worker should be clearly slower: fast {fast}, slow {slow}"
    mixed, doc = makespan(client, n, 20)
    by_slow = sum(1 for it in doc["items"] if it["worker"] == "slow")
    # 3. A straggler: the fast worker is busy with an urgent job when a long pair of items arrives, so
    #    the slow worker claims both (a faster worker busy with another job does not count) and
    #    starts the first. Once the fast worker is idle, the pair's job has nothing queued and the
    #    slow worker is far from done: the fast one backs up the item expected to end last (the one
    #    claimed and not started), stores it first, and the slow run of it stops at its first step.
    with fast_held(client, r, 50):  # the slow worker, measured now, leaves the urgent job to the fast one
        long_job = claimed_by_slow(client, {"prompts": ["the straggler", "claimed behind it"], "priority": 1,
                                            "params": {**PARAMS, "steps": 60, "seed": 51}})
    doc = wait_job(client, long_job, 300)
    assert doc["state"] == "succeeded", doc
    first, claimed = doc["items"]
    log = st.workdir / "worker-slow.log"
    logs = "\n".join(f"--- {n}:\n" + "\n".join((st.workdir / f"worker-{n}.log").read_text(errors="replace")
                                                 .splitlines()[-15:]) for n in ("fast", "slow"))
    assert claimed["worker"] == "fast", f"{claimed}\n{logs}"
    assert [(r["worker"], r.get("backup", False), r["outcome"]) for r in claimed["runs"]] == [
        ("slow", False, "stopped"), ("fast", True, "won")], claimed["runs"]
    # the first item: made by the slow run, or backed up too once the fast worker was idle again
    assert first["worker"] == "slow" or [(r["worker"], r["outcome"]) for r in first["runs"]] == [
        ("slow", "stopped"), ("fast", "won")], first
    stopped = f"items [{claimed['index']}]: another run stored them first; this run stopped"
    wait_until(lambda: stopped in log.read_text(errors="replace"), "the slow worker's run of it stopped", 120)
    assert r.hget(f"sdq:job:{long_job}", "c:succeeded") == b"2"
    assert slow_svc.proc.poll() is None  # the loser goes on working
    # 4. The same fleet under the count policy (chunks from the number of workers, whole chunks).
    st.stop()
    st2 = stack_factory("mixed-count", env={"SDQ_SCHEDULING": "count"})
    client2 = Client(st2.env["SDQ_SERVER"])
    start(st2, "fast", 0)
    start(st2, "slow", 1)
    run_job(client2, 4, 30)  # warm
    counted, _ = makespan(client2, n, 40)
    summary = (f"in fast-worker item times: alone {alone:.1f}, speed-aware {mixed:.1f} ({by_slow} items on the "
               f"slow worker), count policy {counted:.1f}; rates fast {fast:.3g}, slow {slow:.3g}")
    print(summary)
    assert 1 <= by_slow <= n // 2, summary  # its share of the work, never most of it
    assert mixed < alone and mixed < counted, summary
