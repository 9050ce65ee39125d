"""How work is shared in a fleet of unequal workers: chunk sizes, how much of a chunk a worker
starts, and when an idle worker backs up a straggler. Pure functions of measured rates
(`sdq.scheduling.speed`), used alike by the producer, the workers and the fleet simulator (`bench/sim.py`).

Rates are in megapixel-steps per second, `work` in megapixel-steps per item.

1. Chunks (`chunk_sizes`): guided self-scheduling in units of the fastest worker. Each chunk is
   1/`CHUNK_SPLIT` of the items left divided by the fleet's speed counted in fastest workers
   (sum of rates / fastest rate), at most `CHUNK_MAX`, in whole micro-batches. A fleet of equal
   workers gets today's sizes; a fast worker never waits on many small messages because a slow one
   joined.
2. Claims (`claim_count`): a worker starts only the part of a chunk it finishes by the time the
   whole capable fleet would have drained the job's queued items (`backlog`) and the items other
   workers hold (claimed, not finished): floor((backlog + held) x its rate / fleet rate); the rest
   goes back to the queue at once. When that is less than one item, it
   starts one item only if the workers faster than it (by `FASTER`) would need at least one of its
   item times to drain the backlog, else it leaves the chunk to them. The fastest worker always
   takes the whole chunk, and a chunk left alone longer than `DEFER_MAX_S` is run by whoever holds
   it, so nothing waits for ever on a fast worker that is busy elsewhere.
3. Backups (`straggler`): once a job has nothing queued, an idle capable worker backs up the
   item expected to end last, if a fresh run here would end sooner, once per item. Candidates are
   an item being made now (alone in its batch) and the ones a worker claimed but has not started:
   those are expected after its current batch, one after another at the pace that batch shows
   (`claimed_ends`), so a worker slower than it published loses its claimed items from the back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from sdq import defaults

FASTER = 1.5
"""A worker counts as faster than another when its rate is at least this many times higher."""

DEFER_MAX_S = 600.0
"""Seconds a chunk may be left to faster workers before any capable worker runs it (a last resort:
faster workers busy with other jobs do not count anyway)."""

BACKUP_MIN_RUN_S = 0.5
"""Seconds an item must have run before it gets a straggler backup. Every run claims its result
before storing it (`JobStore.claim_result`), so two copies never both store. Half a second: at GPU
speed (items of 0.5-3 s) a straggler is found while the job's other items are still running
(`bench/gpusim.py`)."""

DEFER_PAUSE_S = 0.5
"""Seconds a worker that left a chunk to faster workers waits before it takes the next message."""


def chunk_sizes(n_items: int, rates: Sequence[float], batch: int = 1,
                split: int = defaults.CHUNK_SPLIT, most: int = defaults.CHUNK_MAX) -> list[int]:
    """Sizes of the task messages for `n_items` items sharing all parameters, for a fleet whose
    capable workers run at `rates` (equal rates: one per live worker; none known: one worker)."""
    rates = [r for r in rates if r > 0] or [1.0]
    fleet = sum(rates) / max(rates)  # the fleet's speed, counted in fastest workers
    sizes: list[int] = []
    left = n_items
    while left > 0:
        share = math.ceil(left / (split * fleet))
        size = min(most, max(batch, math.ceil(share / batch) * batch), left)
        sizes.append(size)
        left -= size
    return sizes


def claim_count(rate: float, others: Sequence[float], backlog: int, chunk: int, held: Sequence[float] = ()) -> int:
    """How many of a `chunk`'s items a worker running at `rate` should start now, given the rates
    of the other live workers able to run it (`held[i]`: items worker i has claimed and not finished,
    the one it is making counted by the part still ahead; 0 when idle), and the job's queued items
    (`backlog`, this chunk included). 0: leave the chunk to faster workers."""
    held = [float(h) for h in held] or [0.0] * len(others)
    faster = [(r, h) for r, h in zip(others, held) if r >= FASTER * rate]
    if rate <= 0 or not faster:
        return chunk
    backlog = max(backlog, chunk)
    # Our share of what the fleet has left (queued items, plus the ones other workers hold).
    left = backlog + sum(held)
    share = math.floor(left * rate / (rate + sum(others)))
    if share >= 1:
        return min(chunk, share)
    # Less than one item's worth: one item of ours takes 1/rate per unit of work; the faster workers
    # need (backlog + the items they hold) / their rate. Run one only if they would not be done first.
    fast_rate = sum(r for r, _ in faster)
    return 1 if (backlog + sum(h for _, h in faster)) / fast_rate >= 1 / rate else 0


@dataclass(frozen=True)
class Running:
    """An item running somewhere: which, on what, and when it is expected to end (epoch seconds)."""

    job: str
    index: int
    worker: str
    expected_end: float


def straggler(running: Sequence[Running], now: float,
              fresh_run_s: float | Callable[[Running], float]) -> Running | None:
    """The running item an idle worker should back up: of those a fresh run here (`fresh_run_s`
    seconds, or a function of the item) would end sooner by a clear margin (`FASTER`), the one
    expected to end last. None: none."""
    fresh = fresh_run_s if callable(fresh_run_s) else (lambda r: fresh_run_s)
    late = [r for r in running if r.expected_end - now > FASTER * fresh(r)]
    return max(late, key=lambda r: r.expected_end) if late else None


def expected_end(since: float, expected_s: float, now: float) -> float:
    """When a run that started at `since` and was expected to take `expected_s` seconds will end: as
    expected, or, once overdue, after as long again as it has run so far (it is at least that late)."""
    end = since + expected_s
    return end if end > now else now + (now - since)


def claimed_ends(since: float, expected_s: float, running: int, claimed: int, now: float) -> list[float]:
    """When each of a worker's `claimed` items not started yet is expected to end, in order: after the
    batch of `running` items it is making (`expected_end`), one by one at the pace that batch shows
    (as published, or slower once it has run longer than that)."""
    pace = max(expected_s, now - since) / max(1, running)
    end = expected_end(since, expected_s, now)
    return [end + (j + 1) * pace for j in range(claimed)]
