"""Mixed fleets at GPU timescale, for real: a fast worker alone, then a fresh, much slower worker
joins (it has measured nothing, so it counts as a typical worker of its kind: as fast as the other
one) and takes an item of the next job of a few ~1 s items. The fast worker, idle as soon as its
share is done, finds the straggler at once (it looks when it goes idle and while the job has items
running elsewhere; the slow worker published the item as it started it, and its step pace shows it
is far behind), backs it up, and the job ends within 1.10x of the fast worker alone; the slow run
stops at its next step.

The slow worker is pinned to a core it shares with a busy process (as in tests/test_mixed_fleet.py),
at a lower priority (`SLOW_NICE`).
Wall times are compared in units of the fast worker's own time per item in the same job (the
machine's speed drifts between jobs; a job's makespan and its items' times move together)."""
from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from sdq import defaults
from cli.client import Client
from tests.conftest import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.serial,
    pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is needed to pin workers"),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to pin a fast and a slow worker"),
]

PARAMS = {"width": 256, "height": 256, "steps": 20}
"""About 1 s per item on one thread of this machine's CPU (the tiny model shaped like SD 1.5)."""
N = 6
HOGS = 1
"""Busy processes sharing the slow worker's core, each in a session of its own (the kernel's
autogroup shares a core between sessions, by each session's nice value)."""
SLOW_NICE = 10
"""The slow worker, once it has joined: pinned to the hogs' core, its session (each worker has its own)
at this nice value, so it gets about a tenth of that core (weight 110 against a hog's 1024): some 10x
slower than the fast one, whatever the machine's other load (which both workers share)."""
WORKER = ("--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd")
LIMIT = 1.10


@pytest.fixture(scope="module")
def hogs():
    procs = [subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", "while True: pass"], start_new_session=True)
             for _ in range(HOGS)]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def run_job(client: Client, r: redis.Redis, seed: int) -> tuple[dict, dict[int, list[tuple[float, int]]]]:
    """Submit N items (distinct seeds: nothing answered from stored results); wait for the job while
    sampling the step count each item's run wrote (time, steps), which shows each run's pace."""
    job = client.submit({"prompts": [f"joined slow worker {seed} {i}" for i in range(N)],
                         "params": {**PARAMS, "seed": seed}})["id"]
    samples: dict[int, list[tuple[float, int]]] = {}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for index, steps in r.hgetall(f"sdq:job:{job}:prog").items():
            seen = samples.setdefault(int(index), [])
            if not seen or seen[-1][1] != int(steps):
                seen.append((time.time(), int(steps)))
        doc = client.job(job)
        if doc["state"] in ("succeeded", "failed", "cancelled"):
            assert doc["state"] == "succeeded", doc
            return doc, samples
        time.sleep(0.05)
    raise TimeoutError(f"job {job}")


def in_item_times(doc: dict) -> tuple[float, float]:
    """The job's time from creation to end in the fast worker's item times, and that item time."""
    per_item = statistics.median(it["duration_s"] for it in doc["items"] if it["worker"] == "fast")
    return (doc["finished_at"] - doc["created_at"]) / per_item, per_item


def stop_time(log: str, index: int) -> float | None:
    """When the slow worker's log says its run of item `index` stopped (epoch seconds; the log's times are
    local, as `datetime.timestamp` reads them)."""
    for line in log.splitlines():
        if f"items [{index}]: another run stored them first; this run stopped" in line:
            m = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line)
            if m:
                return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def test_a_joined_slow_worker_does_not_hold_up_a_job_of_short_items(stack_factory, hogs):
    st = stack_factory("joined-slow")
    client = Client(st.env["SDQ_SERVER"])
    r = redis.Redis.from_url(st.env["SDQ_REDIS_URL"])
    # 1. The fast worker alone (warm; a few jobs, its measured speed published).
    st.worker("fast", *WORKER, prefix=("taskset", "-c", "0"))
    run_job(client, r, 1)
    alone, alone_item = in_item_times(run_job(client, r, 2)[0])
    # 2. A fresh, much slower worker joins: it has measured nothing.
    slow = st.worker("slow", *WORKER, prefix=("taskset", "-c", "1"))
    Path(f"/proc/{slow.proc.pid}/autogroup").write_text(str(SLOW_NICE))  # taskset ran the worker in its place
    doc, samples = run_job(client, r, 3)
    mixed, mixed_item = in_item_times(doc)
    slowed = [it for it in doc["items"] if any(run["worker"] == "slow" for run in it.get("runs") or [])]
    logs = "\n".join(f"--- {n}:\n" + "\n".join((st.workdir / f"worker-{n}.log").read_text(errors="replace")
                                                 .splitlines()[-20:]) for n in ("fast", "slow"))
    summary = (f"in fast-worker item times: alone {alone:.2f} (item {alone_item:.2f} s), with the joined slow "
               f"worker {mixed:.2f} (item {mixed_item:.2f} s); items the slow worker began: "
               f"{[it['index'] for it in slowed]}")
    print(summary)
    # the slow worker took a share (it counted as typical), and each such item was backed up and won by the fast one
    assert slowed, f"the slow worker took no item: the test shows nothing\n{summary}\n{logs}"
    for it in slowed:
        assert it["worker"] == "fast", f"{it}\n{summary}\n{logs}"
        assert [(run["worker"], run.get("backup", False), run["outcome"]) for run in it["runs"]] == [
            ("slow", False, "stopped"), ("fast", True, "won")], it["runs"]
    assert mixed <= LIMIT * alone, f"{summary}\n{logs}"
    # 3. The loser stops at its next step: within one of its step times (the pace its progress showed)
    #    plus the progress-write interval after the fast copy was stored.
    log = st.workdir / "worker-slow.log"
    for it in slowed:
        stopped = wait_until(lambda: stop_time(log.read_text(errors="replace"), it["index"]),
                             f"the slow run of item {it['index']} stopped", 60)
        pace = samples.get(it["index"]) or []
        assert len(pace) >= 2, f"item {it['index']}: its slow run wrote no step pace: {pace}"
        step_s = (pace[-1][0] - pace[0][0]) / max(1, pace[-1][1] - pace[0][1])
        late = stopped - it["finished_at"]
        print(f"item {it['index']}: the slow run stopped {late:.2f} s after the fast copy was stored "
              f"(one of its steps: {step_s:.2f} s)")
        assert late <= step_s + defaults.PROGRESS_INTERVAL + 1.0, (
            f"item {it['index']}: the slow run stopped {late:.2f} s after the fast copy was stored; "
            f"one of its steps takes {step_s:.2f} s")
