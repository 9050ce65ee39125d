"""Straggler backups: an idle worker runs a second copy of an item that another worker is expected
to finish much later (`sdq.scheduling.scheduling.straggler`), once the item's job has nothing left queued:
an item being made now (alone: one item of a batch backed up would not end the job sooner), or
one claimed and not started yet (`sdq.scheduling.scheduling.claimed_ends`).

Decided by an idle worker (`workers.fleet.idlewatch`: when it goes idle, when a worker publishes what it starts
or finishes, and every `watch.IDLE_POLL_S` while a job with nothing queued has items running
elsewhere) from the fleet's capability records (each busy worker publishes what it is running as
it starts it, since when and how long it expects it to take) and the step counts its items wrote
(`watch.pace_end`: after a few steps, their pace, not the published estimate, gives the end); the backup is
recorded on the item (`JobStore.start_backup`, at most one per item) and sent to this worker's own
queue, so no other worker takes it. The first copy to claim the result stores it
(`JobStore.claim_result`); the other stops at its next denoising step (`workers.running.runner`), and an
original that reaches a claimed item already stored stops at its first step.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Callable

from sdq import contract
from sdq.records import Chunk
from sdq.scheduling import scheduling, speed, watch
from sdq.state import fleet
from sdq.state.store import JobStore
from workers.running.routing import Publish, Router
from workers.running.speedometer import Speedometer

log = logging.getLogger(__name__)


MAX_TRIES = 8
"""Candidates an idle worker tries per look before it gives up until the next one."""


class Backups:
    """The straggler backups one worker starts when it is idle."""

    def __init__(self, name: str, jobs: JobStore, router: Router, speedometer: Speedometer,
                 is_idle: Callable[[], bool], publish: Publish, queues: list[str]) -> None:
        self.name, self.jobs, self.router, self.speedometer = name, jobs, router, speedometer
        self.is_idle, self.publish, self.queues = is_idle, publish, set(queues)
        self.watched, self.young_until = 0, None  # from the last look (`candidates`)

    def candidates(self, now: float) -> list[tuple[scheduling.Running, dict[str, Any]]]:
        """Items running on other workers that this worker could back up now. Also notes how many
        items it watches (running elsewhere in jobs with nothing queued, backups possible here) and when
        the first too young for a backup comes of age, for `watch.next_check`. Three round trips to
        Redis whatever the fleet's size: the records, the jobs' queued counts, the items' step counts."""
        busy: list[tuple[str, dict[str, Any]]] = []
        for record in self.jobs.live_workers():
            cur = record.current_item or {}
            if record.name == self.name or not cur.get("running") or cur.get("expected_s") is None:
                continue
            if cur.get("queue") in self.queues and self.router.refusal(Chunk(
                    job=cur["job"], model=cur["model"], pipeline=cur["pipeline"], params=cur["params"], items=[],
                    queue=cur["queue"])) is None:
                busy.append((record.name, cur))
        queued = self.jobs.queued_counts(sorted({cur["job"] for _, cur in busy}))
        busy = [(name, cur) for name, cur in busy if queued[cur["job"]] == 0]  # else idle workers have work
        self.watched, self.young_until = 0, None
        old = []
        for name, cur in busy:
            self.watched += len(cur["running"]) + len(fleet.claimed_after(cur))
            if now - cur["since"] >= scheduling.BACKUP_MIN_RUN_S:
                old.append((name, cur))
                continue
            of_age = cur["since"] + scheduling.BACKUP_MIN_RUN_S
            self.young_until = of_age if self.young_until is None else min(self.young_until, of_age)
        counted = self.jobs.steps_counted([(cur["job"], cur["running"]) for _, cur in old])
        out: list[tuple[scheduling.Running, dict[str, Any]]] = []
        for (name, cur), steps in zip(old, counted):
            run_s = run_seconds(cur, steps, now)
            end = scheduling.expected_end(cur["since"], run_s, now)
            job, claimed = cur["job"], fleet.claimed_after(cur)
            if len(cur["running"]) == 1:  # part of a batch backed up would not end the job sooner
                out.append((scheduling.Running(job, cur["running"][0], name, end), cur))
            ends = scheduling.claimed_ends(cur["since"], run_s, len(cur["running"]), len(claimed), now)
            out += [(scheduling.Running(job, index, name, end), cur) for index, end in zip(claimed, ends)]
        return out

    def tick(self) -> bool:
        """If this worker is idle, start at most one backup; True if it did."""
        if not self.is_idle():
            return False
        now = time.time()
        found = self.candidates(now)
        kinds = {(r.job, r.index): cur for r, cur in found}

        def fresh(r: scheduling.Running) -> float:
            cur = kinds[(r.job, r.index)]
            return speed.item_work(cur["pipeline"], cur["params"]) / self.speedometer.rate(
                cur["model"], cur["pipeline"], cur["params"])

        running = [r for r, _ in found]
        for _ in range(MAX_TRIES):  # an item backed up already (by another idle worker) or just ended: the next
            pick = scheduling.straggler(running, now, fresh)
            if pick is None:
                return False
            if self.jobs.start_backup(pick.job, pick.index, self.name):
                break
            running.remove(pick)
        else:
            return False
        job = self.jobs.get(pick.job)
        items = self.jobs.item_records(pick.job, [pick.index])
        if not job or not items:
            return False
        chunk = Chunk.of(job, kinds[(pick.job, pick.index)]["queue"], items)
        log.info("job %s item %d: running on %s, expected to end in %.1f s; backing it up here (a fresh run: %.1f s)",
                 pick.job, pick.index, pick.worker, pick.expected_end - now, fresh(pick))
        self.publish(replace(chunk, backup=True, to=contract.worker_queue(self.name)))
        return True


def run_seconds(cur: dict[str, Any], counted: dict[int, int], now: float) -> float:
    """How long a worker's current batch (its record's `current_item`) takes in all: from the pace of
    the steps its items `counted` (`watch.pace_end`) once a few have run, else as the worker published
    (its rate, or the cold rate of its kind when it has not measured this kind of item)."""
    loop = speed.loop_steps(cur["pipeline"], cur["params"])
    done = min(counted.values(), default=0) * loop / max(1, int(cur["params"]["steps"]))
    return watch.run_seconds(cur["since"], now, int(done), loop, cur["expected_s"])
