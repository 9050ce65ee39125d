"""Straggler backups: an idle worker runs a second copy of an item that another worker is expected
to finish much later (`sdq.scheduling.scheduling.straggler`), once the item's job has nothing left queued:
an item being made now (alone: one item of a batch backed up would not end the job sooner), or
one claimed and not started yet (`sdq.scheduling.scheduling.claimed_ends`).

Decided on the idle worker's heartbeat from the fleet's capability records (each busy worker
publishes what it is running, since when and how long it expects it to take); the backup is
recorded on the item (`JobStore.start_backup`, at most one per item) and sent to this worker's own
queue, so no other worker takes it. The first copy to claim the result stores it
(`JobStore.claim_result`); the other stops at its next denoising step (`workers.runner`), and an
original that reaches a claimed item already stored stops at its first step.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Callable

from sdq import contract
from sdq.records import Chunk
from sdq.scheduling import scheduling, speed
from sdq.state import fleet
from sdq.state.store import JobStore
from workers.routing import Publish, Router
from workers.speedometer import Speedometer

log = logging.getLogger(__name__)


MAX_TRIES = 8
"""Candidates an idle worker tries per heartbeat before it gives up until the next one."""


class Backups:
    """The straggler backups one worker starts when it is idle."""

    def __init__(self, name: str, jobs: JobStore, router: Router, speedometer: Speedometer,
                 is_idle: Callable[[], bool], publish: Publish, queues: list[str]) -> None:
        self.name, self.jobs, self.router, self.speedometer = name, jobs, router, speedometer
        self.is_idle, self.publish, self.queues = is_idle, publish, set(queues)

    def candidates(self, now: float) -> list[tuple[scheduling.Running, dict[str, Any]]]:
        """Items running on other workers that this worker could back up now."""
        out: list[tuple[scheduling.Running, dict[str, Any]]] = []
        drained: dict[str, bool] = {}
        for record in fleet.live_workers(self.jobs.redis):
            cur = record.get("current_item") or {}
            if record.get("name") == self.name or not cur.get("running") or cur.get("expected_s") is None:
                continue
            if cur.get("queue") not in self.queues or now - cur["since"] < scheduling.BACKUP_MIN_RUN_S:
                continue
            job = cur["job"]
            if job not in drained:  # a job with queued items gives idle workers work of their own
                drained[job] = self.jobs.queued_count(job) == 0
            kind = Chunk(job=job, model=cur["model"], pipeline=cur["pipeline"], params=cur["params"], items=[],
                         queue=cur["queue"])
            if not drained[job] or self.router.refusal(kind) is not None:
                continue
            end = scheduling.expected_end(cur["since"], cur["expected_s"], now)
            if len(cur["running"]) == 1:  # part of a batch backed up would not end the job sooner
                out.append((scheduling.Running(job, cur["running"][0], record["name"], end), cur))
            claimed = fleet.claimed_after(cur)
            ends = scheduling.claimed_ends(cur["since"], cur["expected_s"], len(cur["running"]), len(claimed), now)
            out += [(scheduling.Running(job, index, record["name"], end), cur) for index, end in zip(claimed, ends)]
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
