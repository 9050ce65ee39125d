"""Mixed fleets at GPU timescale, simulated with the latencies that matter there.

`bench/sim.py` counts time in item times and lets every worker see every other one at once; with
items of 0.5-3 s the delays are what decide a job: when a worker's running item becomes visible to
the others, when an idle worker looks for a straggler, how its end is estimated, when a losing copy
stops. This simulator drives sdq's own rules (`sdq.scheduling.scheduling`: chunks, claims,
stragglers; `sdq.scheduling.watch`: pace and polling) with those delays, for two policies:

- `today` (before issue 24): a worker's record, with the item it runs, reaches the fleet on its
  heartbeat (every `HEARTBEAT_S`, at a random phase per worker) and when it goes idle; an idle worker
  looks for stragglers on its heartbeat only; an item's end is estimated from the rate its worker
  published (a worker that has not measured this kind counts as a typical one).
- `now`: a worker publishes what it starts as it starts it (`PUBLISH_S`); an idle worker looks when
  it goes idle, on every publication in the fleet and every `IDLE_POLL_S` while a job with nothing
  queued has items running elsewhere; an item's end comes from its step pace once it has run
  `MIN_PACE_STEPS` steps.

Both: a backup begins `DISPATCH_S` after it is decided (a Celery message to the worker's own queue);
the losing copy stops at its next progress write (every step, at most every `PROGRESS_INTERVAL`); an
original that reaches a claimed item already stored spends one step on it. Rates: a worker's
measured rate is its true one once it has made an item (smoothed as the speedometer does); a worker
that joins mid-job has measured nothing and counts as typical (as fast as the others); a worker that
slows mid-job keeps publishing its old rate until it has made items at the new one.
Bound: the best schedule of whole items given the true speeds, join and slow-down times
(each item to the worker that would finish it first).
"""
from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sdq import defaults
from sdq.scheduling import scheduling, watch

HEARTBEAT_S = defaults.HEARTBEAT_INTERVAL
PUBLISH_S = 0.002
"""A record's publication reaching the other workers (one Redis round trip)."""
DISPATCH_S = 0.02
"""From a backup decided to its run beginning on the idle worker (Celery message to its own queue)."""
STEPS = 20
"""Denoising steps per item."""
TODAY_MIN_RUN_S = 1.0
"""`scheduling.BACKUP_MIN_RUN_S` before issue 24."""
POLICIES = ("today", "now")
SEEDS = 3
"""Heartbeat phases tried per case (random); the worst makespan is reported."""


@dataclass(frozen=True)
class Spec:
    """One worker: seconds per item (`item_s`), when it joins, when and how much it slows, and the
    rate it is first taken to have (items/s; None: its true one, measured before the job)."""

    item_s: float
    join_at: float = 0.0
    slow_at: float | None = None
    slow_by: float = 1.0
    assumed: float | None = None

    def seconds(self, t: float) -> float:
        """Seconds per item for an item started at `t`."""
        return self.item_s * (self.slow_by if self.slow_at is not None and t >= self.slow_at else 1.0)


@dataclass
class W:
    """A simulated worker."""

    i: int
    spec: Spec
    rate: float  # its measured rate, items/s (what it publishes)
    live: bool = False
    current: int | None = None
    since: float = 0.0
    step_s: float = 0.0
    token: int = 0
    pending: deque = field(default_factory=deque)
    idle: bool = False
    pub: dict[str, Any] | None = None  # its current item as the fleet sees it
    pub_rate: float = 0.0


def cases(quick: bool = False) -> list[tuple[str, float, int, list[Spec]]]:
    """(fleet, fast item seconds, items, workers) for every case."""
    out = []
    for t in (0.5, 1.0, 3.0):
        for n in ((4, 16) if quick else (4, 16, 64)):
            fleets = {
                "1 GPU + 1 CPU at 1/20": [Spec(t), Spec(20 * t)],
                "1 GPU + 2 CPU at 1/60": [Spec(t), Spec(60 * t), Spec(60 * t)],
                "2 GPU + 1 CPU at 1/40": [Spec(t), Spec(t), Spec(40 * t)],
                "1 GPU; a 1/20 worker joins at 1/4 of the job, unmeasured": [
                    Spec(t), Spec(20 * t, join_at=n * t / 4, assumed=1 / t)],
                "2 GPU; one slows 10x at 1/3 of the job": [Spec(t), Spec(t, slow_at=n * t / 2 / 3, slow_by=10.0)],
            }
            out += [(name, t, n, specs) for name, specs in fleets.items()]
    return out


class GpuSim:
    """One job of `n` items on workers `specs` under `policy`."""

    def __init__(self, specs: list[Spec], n: int, policy: str, seed: int = 0) -> None:
        self.policy, self.n, self.now = policy, n, 0.0
        rnd = random.Random(seed)
        self.ws = [W(i, s, s.assumed or 1 / s.item_s) for i, s in enumerate(specs)]
        self.events: list[tuple[float, int, str, int, int]] = []
        self.seq = itertools.count()
        sizes = scheduling.chunk_sizes(n, [w.rate for w in self.ws if w.spec.join_at == 0])
        starts = itertools.accumulate([0, *sizes])
        self.queue: deque = deque(list(range(s, s + k)) for s, k in zip(starts, sizes))
        self.queued, self.done, self.backed_up = n, set(), set()
        self.copies: dict[int, list[int]] = {}  # item -> workers running a copy
        self.backups = self.looks = 0
        for w in self.ws:
            self.at(w.spec.join_at, "join", w.i)
            phase = rnd.uniform(0, HEARTBEAT_S)
            self.at(w.spec.join_at + phase, "beat", w.i)

    def at(self, t: float, kind: str, wid: int, token: int = 0) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, wid, token))

    def run(self) -> float:
        """Simulate until every item is done; the makespan in seconds."""
        while len(self.done) < self.n:
            self.now, _, kind, wid, token = heapq.heappop(self.events)
            w = self.ws[wid]
            if kind == "join":
                w.live = True
                self.publish(w)
                self.next_item(w)
            elif kind == "beat":
                self.publish(w)
                if self.policy == "today" and w.idle:
                    self.look(w)
                self.at(self.now + HEARTBEAT_S, "beat", wid)
            elif kind == "end" and token == w.token and w.current is not None:
                self.finish(w, stored=True)
            elif kind == "stop" and token == w.token and w.current is not None:
                self.finish(w, stored=False)
            elif kind == "free" and w.current is None:
                self.next_item(w)
            elif kind == "look" and w.idle:
                self.look(w)
        return self.now

    # -- what the fleet sees ---------------------------------------------------------------
    def publish(self, w: W) -> None:
        w.pub_rate = w.rate
        w.pub = None if w.current is None else {
            "items": [w.current, *w.pending], "running": [w.current], "since": w.since, "expected_s": 1 / w.rate}
        if self.policy == "now":  # every publication wakes the idle workers
            for o in self.ws:
                if o.live and o.idle and o is not w:
                    self.at(self.now + PUBLISH_S, "look", o.i)

    def steps_done(self, o: W) -> int:
        """Steps the item running on `o` has counted (written at each step, at most every PROGRESS_INTERVAL)."""
        every = max(1, math.ceil(defaults.PROGRESS_INTERVAL / o.step_s)) if o.step_s else 1
        return (int((self.now - o.since) / o.step_s) // every) * every if o.step_s else 0

    # -- running items ---------------------------------------------------------------------
    def start(self, w: W, item: int, delay: float = 0.0) -> None:
        dur = w.spec.seconds(self.now)
        w.current, w.since, w.step_s, w.idle = item, self.now + delay, dur / STEPS, False
        w.token += 1
        self.copies.setdefault(item, []).append(w.i)
        self.at(w.since + dur, "end", w.i, w.token)
        if self.policy == "now":
            self.publish(w)

    def finish(self, w: W, stored: bool) -> None:
        item, w.current = w.current, None
        self.copies.get(item, []).remove(w.i)
        if stored and item not in self.done:
            self.done.add(item)
            dur = self.now - w.since
            w.rate = 1 / dur if w.rate == (w.spec.assumed or 0) else 0.7 * w.rate + 0.3 / dur
            for other in self.copies.get(item, []):  # the loser stops at its next progress write
                lo = self.ws[other]
                every = lo.step_s * max(1, math.ceil(defaults.PROGRESS_INTERVAL / lo.step_s))
                stop = lo.since + math.ceil(max(0.0, self.now - lo.since) / every + 1e-9) * every
                self.at(min(stop, lo.since + lo.spec.seconds(lo.since)), "stop", other, lo.token)
        self.next_item(w)

    def next_item(self, w: W) -> None:
        if not w.live:
            return
        skipped = 0
        while w.pending:
            item = w.pending.popleft()
            if item not in self.done:
                return self.start(w, item, delay=skipped * w.spec.seconds(self.now) / STEPS)
            skipped += 1  # an original reaching a stored item stops at its first step
        if self.queue:
            return self.claim(w)
        w.idle = True
        self.publish(w)  # the runner announces it is idle
        if self.policy == "now":
            self.look(w)

    def claim(self, w: W) -> None:
        items = self.queue.popleft()
        others = [o for o in self.ws if o is not w and o.live]
        held = [0.0 if o.pub is None else len(o.pub["items"]) for o in others]
        take = scheduling.claim_count(w.rate, [o.pub_rate for o in others], self.queued, len(items), held)
        self.queued -= take
        if take < len(items):
            self.queue.append(items[take:])
            for o in others:
                if o.idle:
                    o.idle = False
                    self.at(self.now, "free", o.i)
        if take == 0:
            w.idle = False  # takes the next message after the pause
            self.at(self.now + scheduling.DEFER_PAUSE_S, "free", w.i)
            return
        w.pending.extend(items[:take])
        self.next_item(w)

    # -- straggler backups -----------------------------------------------------------------
    def look(self, w: W) -> None:
        if w.current is not None or self.queue:
            return
        self.looks += 1
        watched, young, running = 0, None, []
        for o in self.ws:
            rec = o.pub
            if o is w or not o.live or rec is None:
                continue
            items = [i for i in rec["items"] if i not in self.done]
            if not items:
                continue
            watched += len(items)
            min_run = TODAY_MIN_RUN_S if self.policy == "today" else scheduling.BACKUP_MIN_RUN_S
            if self.now - rec["since"] < min_run:
                come = rec["since"] + min_run
                young = come if young is None else min(young, come)
                continue
            run_s = rec["expected_s"]
            if self.policy == "now" and o.current == rec["running"][0]:
                run_s = watch.run_seconds(rec["since"], self.now, self.steps_done(o), STEPS, run_s)
            end = scheduling.expected_end(rec["since"], run_s, self.now)
            claimed = rec["items"][1:]
            ends = [end, *scheduling.claimed_ends(rec["since"], run_s, 1, len(claimed), self.now)]
            running += [scheduling.Running("job", i, str(o.i), e) for i, e in zip(rec["items"], ends)
                        if i not in self.done and i not in self.backed_up]
        pick = scheduling.straggler(running, self.now, 1 / w.rate)
        if pick is not None:
            self.backed_up.add(pick.index)
            self.backups += 1
            self.start(w, pick.index, delay=DISPATCH_S)
            return
        if self.policy == "now":
            delay = watch.next_check(watched, young, self.now)
            if delay is not None:
                self.at(self.now + delay, "look", w.i)


def best(specs: list[Spec], n: int) -> float:
    """The best makespan of `n` whole items: each in turn to the worker that would finish it first."""
    free = [s.join_at for s in specs]
    last = 0.0
    for _ in range(n):
        ends = [f + s.seconds(f) for f, s in zip(free, specs)]
        k = min(range(len(specs)), key=ends.__getitem__)
        free[k] = ends[k]
        last = max(last, ends[k])
    return last


def run_cases(quick: bool = False) -> list[dict[str, Any]]:
    """Every case under both policies: worst makespan over the heartbeat phases, against `best`."""
    rows = []
    for name, t, n, specs in cases(quick):
        low = best(specs, n)
        row: dict[str, Any] = {"fleet": name, "item_s": t, "items": n, "best_s": round(low, 2)}
        for policy in POLICIES:
            runs = [GpuSim(specs, n, policy, seed) for seed in range(SEEDS)]
            spans = [sim.run() for sim in runs]
            worst = max(range(SEEDS), key=spans.__getitem__)
            row[policy] = {"makespan_s": round(spans[worst], 2), "vs_best": round(spans[worst] / low, 3),
                           "backups": runs[worst].backups, "looks": runs[worst].looks}
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows for RESULTS.md."""
    out = [["fleet", "fast item s", "items", "best s", *(f"{p}: makespan s (/ best)" for p in POLICIES),
            "backups (today / now)", "looks (now)"]]
    for r in rows:
        out.append([r["fleet"], r["item_s"], r["items"], r["best_s"],
                    *(f"{r[p]['makespan_s']} ({r[p]['vs_best']:.3f})" for p in POLICIES),
                    f"{r['today']['backups']} / {r['now']['backups']}", r["now"]["looks"]])
    return out
