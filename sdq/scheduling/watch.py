"""When an idle worker looks for stragglers, and when a running item is expected to end: pure
rules used by the workers (`workers.running.backups`, `workers.watch`) and the fleet simulator (`bench/sim.py`).

1. Expected end (`pace_end`): before an item has run `MIN_PACE_STEPS` denoising steps, the end its
   worker published (from its measured rate, or the typical rate of its device kind when it has not
   measured this kind of item: the cold estimate); from then on, the pace its steps show (the
   per-item step count each run writes as it goes), so a worker that is much slower than it was
   taken to be is found out after a few of its steps, not after its cold estimate runs out.
2. Checks (`next_check`): an idle worker looks at once when it goes idle and whenever a worker
   publishes what it starts or finishes; while some job with nothing queued has items running on
   other workers that this worker could back up, it looks again every `IDLE_POLL_S`; otherwise it
   waits for the next event (or its heartbeat). Events come at most every `EVENT_MIN_GAP_S` each.
"""
from __future__ import annotations

MIN_PACE_STEPS = 2
"""Denoising steps an item must have run before its step pace, not the cold estimate, gives its
expected end (the first steps also pay the text encoder and warm-up, so one step says little)."""

IDLE_POLL_S = 0.2
"""Seconds between an idle worker's looks while a job with nothing queued has items running
elsewhere (each look costs a few Redis reads: see docs/DESIGN.md, "Straggler checks")."""

EVENT_MIN_GAP_S = 0.05
"""Least seconds between two looks triggered by fleet events (a busy fleet publishes many)."""


def pace_end(since: float, now: float, steps_done: int, steps_total: int, cold_end: float) -> float:
    """When a run that started at `since` and has counted `steps_done` of its `steps_total` steps by
    `now` will end: at the pace those steps show once there are `MIN_PACE_STEPS` of them (the count
    was written at or before `now`, so this errs late), else `cold_end` (the published estimate)."""
    if steps_total <= 0 or steps_done < MIN_PACE_STEPS or now <= since:
        return cold_end
    done = min(steps_done, steps_total)
    return since + (now - since) * steps_total / done


def run_seconds(since: float, now: float, steps_done: int, steps_total: int, expected_s: float) -> float:
    """How long the run (a whole batch) takes in all: from its step pace once known, else as published."""
    return pace_end(since, now, steps_done, steps_total, since + expected_s) - since


def next_check(watched: int, young_until: float | None, now: float, poll_s: float = IDLE_POLL_S) -> float | None:
    """Seconds until an idle worker's next look for stragglers, given how many items it watched on its
    last look (running elsewhere in jobs with nothing queued, that it could back up) and when the first
    of those too young for a backup comes of age (`young_until`). None: nothing to watch, wait for an
    event."""
    if watched <= 0:
        return None
    delay = poll_s
    if young_until is not None:
        delay = min(delay, max(0.0, young_until - now))
    return delay
