"""A long model load reports progress (issue 39 defect 7): the worker's leases stay renewed while it loads."""
from __future__ import annotations

import threading

import redis

from sdq.state.leases import UnackedIndex
from workers.fleet.leases import Leases
from workers.loading.loadwatch import progress_while


def test_a_long_load_is_progress_not_a_stall():
    leases = Leases(UnackedIndex(redis.Redis()), stall_timeout=0.2)  # never connects: only its progress clock is used
    leases.busy()
    ticks, enough = [], threading.Event()

    def report() -> None:
        leases.progress()
        ticks.append(1)
        if len(ticks) >= 10:  # 10 x 0.05 s: well past the stall timeout
            enough.set()

    with progress_while(report, every=0.05, most=60):
        assert enough.wait(30)
        assert not leases.stalled()


def test_a_load_longer_than_its_bound_counts_as_hung():
    leases = Leases(UnackedIndex(redis.Redis()), stall_timeout=0.1)
    leases.busy()
    ticks: list[int] = []
    stalled = threading.Event()
    with progress_while(lambda: (leases.progress(), ticks.append(1)), every=0.02, most=0.1):
        for _ in range(1500):  # reports stop after `most`: the worker looks stalled again (30 s at most)
            if leases.stalled() or stalled.wait(0.02):
                stalled.set()
                break
    assert ticks and leases.stalled()
