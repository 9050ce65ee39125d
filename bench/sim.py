"""9. Mixed fleets, simulated: makespan against the lower bound for three sharing policies, and at
GPU timescale with the latencies of detection and publication (`bench/gpusim.py`), today beside now.

A discrete-event simulation of one job on a fleet of workers of unequal speed, driving sdq's own
policy functions (`sdq.scheduling.scheduling`: chunk sizes, claims, straggler backups) rather than a copy:

- `count`: before speed awareness: chunks sized from the count of workers, every worker takes
  whole chunks in queue order;
- `speed`: chunks sized from the measured rates, each worker starts only its share of a chunk
  (`claim_count`) and sends the rest back to the end of the queue;
- `speed+backups`: the same, and a worker that finds the queue empty backs up the running item
  expected to end last (`straggler`; as in sdq, an item being made now or one a worker has claimed
  but not started); the first copy to finish wins and the other stops at once.

Every item is one unit of work; rates are items per second (the fastest worker makes one per
second), known to every worker (the steady state after each has made its first item), except in
the last fleet, where one worker runs 10x slower than the rate it published. Lower bound:
max(total work / total rate, one item on the fastest worker). Message and upload costs are not
modelled (the live benchmarks measure them).
"""
from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bench import gpusim
from bench.common import main_for, target
from sdq.scheduling import scheduling
from sdq.state import fleet

FLEETS: dict[str, list[float]] = {
    "1 fast + 4 at 1/20": [1.0] + [0.05] * 4,
    "8 fast + 8 at 1/3": [1.0] * 8 + [1 / 3] * 8,
    "100 mixed (20 x 1, 40 x 1/3, 40 x 1/20)": [1.0] * 20 + [1 / 3] * 40 + [0.05] * 40,
    "8 equal, 1 silently 10x slower than it published": [1.0] * 8 + [0.1],
}
PUBLISHED: dict[str, list[float]] = {
    "8 equal, 1 silently 10x slower than it published": [1.0] * 9,
}
"""Rates the workers publish where they differ from their true ones (a GPU throttling, a noisy
neighbour): the policy sees these, the simulated clock runs at the true ones."""
SIZES = (10, 100, 1000, 10_000, 100_000)
QUICK_SIZES = (10, 100, 1000)
POLICIES = ("count", "speed", "speed+backups")


@dataclass
class Worker:
    """One simulated worker."""

    name: int
    rate: float  # true items per second
    shown: float  # the rate it publishes, which the policy sees
    since: float = 0.0  # when the item running now started
    pending: deque = field(default_factory=deque)  # claimed items not started yet
    current: int | None = None  # item running now
    ends_at: float = 0.0
    token: int = 0  # invalidates the scheduled end of an item stopped early
    idle: bool = False


class Sim:
    """One job of `n` unit items on workers of `rates` under one policy."""

    def __init__(self, rates: list[float], n: int, policy: str, shown: list[float] | None = None) -> None:
        shown = shown or rates
        self.workers = [Worker(i, r, p) for i, (r, p) in enumerate(zip(rates, shown))]
        self.policy = policy
        equal = [1.0] * len(rates)
        sizes = scheduling.chunk_sizes(n, equal if policy == "count" else shown)
        starts = itertools.accumulate([0, *sizes])
        self.queue: deque = deque((list(range(s, s + size)), None) for s, size in zip(starts, sizes))
        self.queued = n
        self.done: set[int] = set()
        self.running_on: dict[int, list[int]] = {}  # item -> workers running a copy now
        self.backed_up: set[int] = set()
        self.n = n
        self.events: list[tuple[float, int, str, int, int]] = []
        self.seq = itertools.count()
        self.now = 0.0
        self.backups = 0  # second copies of items already running
        self.messages = len(sizes)

    def at(self, t: float, kind: str, worker: int, token: int = 0) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, worker, token))

    def run(self) -> float:
        """Simulate until every item is done; the makespan in seconds."""
        for w in self.workers:
            self.at(0.0, "free", w.name)
        while len(self.done) < self.n:
            self.now, _, kind, wid, token = heapq.heappop(self.events)
            w = self.workers[wid]
            if kind == "end":
                if token == w.token and w.current is not None:
                    self.finish(w)
            elif kind == "free" and w.current is None:
                self.next_item(w)
        return self.now

    def start(self, w: Worker, item: int) -> None:
        w.current, w.ends_at, w.idle, w.since = item, self.now + 1 / w.rate, False, self.now
        w.token += 1
        self.running_on.setdefault(item, []).append(w.name)
        self.at(w.ends_at, "end", w.name, w.token)

    def finish(self, w: Worker) -> None:
        item, w.current = w.current, None
        self.running_on.get(item, []).remove(w.name)
        if item not in self.done:
            self.done.add(item)
            for other in self.running_on.pop(item, []):  # the losing copy stops at its next step
                loser = self.workers[other]
                loser.current, loser.token = None, loser.token + 1
                self.at(self.now, "free", other)
        self.next_item(w)

    def next_item(self, w: Worker) -> None:
        while w.pending:
            item = w.pending.popleft()
            if item not in self.done:
                return self.start(w, item)
        if self.queue:
            return self.claim(w)
        if self.policy == "speed+backups" and self.backup(w):
            return
        w.idle = True  # woken when work comes back to the queue

    def claim(self, w: Worker) -> None:
        items, deferred_at = self.queue.popleft()
        take = len(items)
        if self.policy != "count" and (deferred_at is None or self.now - deferred_at <= scheduling.DEFER_MAX_S):
            others = [o for o in self.workers if o is not w]
            take = scheduling.claim_count(w.shown, [o.shown for o in others], self.queued, len(items),
                                          [fleet.held(self.record(o), self.now) for o in others])
        self.queued -= take
        if take < len(items):
            self.queue.append((items[take:], deferred_at if deferred_at is not None else self.now))
            self.messages += 1
            for o in self.workers:  # new message: idle workers look again
                if o.idle and o is not w:
                    o.idle = False
                    self.at(self.now, "free", o.name)
        if take == 0:
            self.at(self.now + scheduling.DEFER_PAUSE_S, "free", w.name)
            return
        w.pending.extend(items[:take])
        self.next_item(w)

    @staticmethod
    def record(o: Worker) -> dict[str, Any] | None:
        """What worker `o` publishes as its `current_item` (the parts the policy reads)."""
        if o.current is None:
            return None
        return {"items": [o.current, *o.pending], "running": [o.current], "since": o.since, "expected_s": 1 / o.shown}

    def backup(self, w: Worker) -> bool:
        running = []
        for o in self.workers:
            if o is w or o.current is None or self.now - o.since < min(scheduling.BACKUP_MIN_RUN_S, 0.5 / o.shown):
                continue  # as sdq: only a worker whose current item has run for a while
            end = scheduling.expected_end(o.since, 1 / o.shown, self.now)  # as published, late once overdue
            claimed = [i for i in o.pending if i not in self.done]
            ends = [end, *scheduling.claimed_ends(o.since, 1 / o.shown, 1, len(claimed), self.now)]
            running += [scheduling.Running("job", item, str(o.name), e)
                        for item, e in zip([o.current, *claimed], ends) if item not in self.backed_up]
        pick = scheduling.straggler(running, self.now, 1 / w.shown)
        if pick is None:
            return False
        self.backed_up.add(pick.index)
        self.backups += 1
        self.start(w, pick.index)
        return True


def bound(rates: list[float], n: int) -> float:
    """Lower bound on the makespan: all work at the fleet's total rate, or one item on the fastest."""
    return max(n / sum(rates), 1 / max(rates))


def optimum(rates: list[float], n: int) -> float:
    """The best makespan any schedule of `n` whole unit items can reach (each item runs on one
    worker): every item in turn to the worker that would finish it first, which is optimal for equal
    items on workers of different speeds. Above `bound` when items do not divide evenly."""
    ends = [(1 / r, r) for r in rates]
    heapq.heapify(ends)
    last = 0.0
    for _ in range(n):
        end, r = heapq.heappop(ends)
        last = end
        heapq.heappush(ends, (end + 1 / r, r))
    return last


def run(opts) -> dict[str, Any]:
    """Every fleet x job size x policy."""
    random.seed(0)
    sizes = QUICK_SIZES if opts.quick else SIZES
    rows: list[dict[str, Any]] = []
    for fleet, rates in FLEETS.items():
        for n in sizes:
            low, best = bound(rates, n), optimum(rates, n)
            row: dict[str, Any] = {"fleet": fleet, "items": n, "bound_s": round(low, 1), "optimum_s": round(best, 1)}
            for policy in POLICIES:
                sim = Sim(rates, n, policy, PUBLISHED.get(fleet))
                span = sim.run()
                row[policy] = {"makespan_s": round(span, 1), "ratio": round(span / low, 3),
                               "vs_optimum": round(span / best, 3),
                               "messages": sim.messages, "backups": sim.backups}
            rows.append(row)
    # Goal: within 10% of the bound wherever the count policy is not. The simple bound cannot be
    # reached when whole items do not divide evenly (10 items on 16 workers), so the goal is
    # checked against the best schedule of whole items, and both are shown.
    # The goal is for fleets whose workers publish their true speed; the fleet with a worker slower
    # than it says is reported apart: only backups can help there, and only once its items are late.
    hard = [r for r in rows if r["count"]["vs_optimum"] > 1.10 and r["fleet"] not in PUBLISHED]
    liars = [r for r in rows if r["fleet"] in PUBLISHED]
    out: dict[str, Any] = {"rows": rows}
    out["targets"] = [target(f"worst makespan / best whole-item schedule, {p}, where the count policy is > 1.10",
                             max((r[p]["vs_optimum"] for r in hard), default=1.0), 1.10) for p in POLICIES[1:]]
    out["table"] = table(rows)
    out["findings"] = [
        f"{len(hard)} of {len(rows) - len(liars)} cases are more than 10% above the best whole-item schedule under the count "
        f"policy; with speed-aware chunks and claims {sum(1 for r in hard if r['speed']['vs_optimum'] > 1.10)} of "
        f"those stay so, with backups too {sum(1 for r in hard if r['speed+backups']['vs_optimum'] > 1.10)}",
        "worst case over the fleets that publish their true speed, makespan / best whole-item schedule: "
        + ", ".join(f"{p} {max(r[p]['vs_optimum'] for r in rows if r['fleet'] not in PUBLISHED):.3f}"
                    for p in POLICIES)]
    if liars:
        out["findings"].append(
            "a worker 10x slower than the rate it publishes (e.g. a throttling GPU before its smoothed rate "
            "catches up; here it never does): worst makespan / best " + ", ".join(
                f"{p} {max(r[p]['vs_optimum'] for r in liars):.3f}" for p in POLICIES)
            + "; with backups, from 100 items up: "
            + f"{max(r['speed+backups']['vs_optimum'] for r in liars if r['items'] >= 100):.3f}. Backups take over "
              "the item it is making and the ones it claimed, once they are late by half a fresh run; a small "
              "job still waits that long")
    gpu = gpusim.run_cases(opts.quick)
    out["gpu_rows"] = gpu
    out["extra"] = [{"title": "At GPU timescale: detection and publication latencies, today beside now",
                     "note": GPU_NOTE, "table": gpusim.table(gpu)}]
    worst = {p: max(r[p]["vs_best"] for r in gpu) for p in gpusim.POLICIES}
    out["targets"].append(target("GPU timescale (items of 0.5-3 s): worst makespan / best whole-item schedule, "
                                 "now", worst["now"], 1.10))
    out["findings"].append(
        f"GPU timescale, {len(gpu)} cases: worst makespan / best whole-item schedule today {worst['today']:.3f}, "
        f"now {worst['now']:.3f}; today's worst are the jobs a worker joins unmeasured or a worker slows in "
        "(the straggler is seen on a heartbeat, 10 s later, and its end from the rate it published)")
    return out


GPU_NOTE = ("`bench/gpusim.py`: the same rules with the delays that decide a job of short items. `today` = before "
            "issue 24: a worker's running item reaches the fleet with its heartbeat (10 s, random phase), an idle "
            "worker looks for stragglers on its heartbeat, an item's end comes from the rate its worker published, "
            "backups after 1 s of run. `now` = a worker publishes what it starts as it starts it; an idle worker "
            "looks when it goes idle, on every publication and every 0.2 s while a job with nothing queued has "
            "items running elsewhere; an item's end comes from its step pace once it has run 2 steps; backups "
            "after 0.5 s of run. Both: 20 steps per item, progress written every step (at most every 0.25 s), the "
            "loser stops at its next write, a backup begins 20 ms after it is decided. A joined worker counts as "
            "fast as the others until it has made an item; a slowed one publishes its old rate until its "
            "smoothed rate catches up. Worst of 3 heartbeat phases. 'best' = the best whole-item schedule for the "
            "true speeds, join and slow-down times.")


def table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows for RESULTS.md."""
    out = [["fleet", "items", "bound s", "best whole-item schedule s",
            *(f"{p}: makespan / bound (/ best)" for p in POLICIES), "messages (count / speed)",
            "backups"]]
    for r in rows:
        out.append([r["fleet"], r["items"], r["bound_s"], r["optimum_s"],
                    *(f"{r[p]['ratio']:.3f} ({r[p]['vs_optimum']:.3f})" for p in POLICIES),
                    f"{r['count']['messages']} / {r['speed']['messages']}",
                    r["speed+backups"]["backups"]])
    return out


if __name__ == "__main__":
    raise SystemExit(main_for("sim", run, __doc__.splitlines()[0]))
