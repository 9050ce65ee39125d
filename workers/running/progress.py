"""The denoising-step hook: throttled progress writes and the cooperative cancel check."""
from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from sdq import defaults
from sdq.state.errors import StateError
from sdq.state.runs import STOP_CANCELLED, STOP_UNWANTED
from sdq.state.store import JobStore
from workers.testing.faults import Faults
from workers.fleet.leases import Leases

log = logging.getLogger(__name__)


class Pipe(Protocol):
    """A loaded diffusers pipeline as the step hook sees it: setting `_interrupt` stops its loop."""

    _interrupt: bool


class StepProgress:
    """`callback_on_step_end` hook: throttled progress writes and the cooperative cancel check."""

    def __init__(self, jobs: JobStore, job_id: str, indices: list[int], item_steps: int, loop: int,
                 leases: Leases | None = None, faults: Faults | None = None, worker: str | None = None) -> None:
        self.jobs, self.job_id, self.indices, self.worker = jobs, job_id, indices, worker
        self.item_steps, self.loop = item_steps, loop
        self.leases, self.faults = leases, faults
        self.reported = 0
        self.cancelled = False  # the job was cancelled
        self.unwanted = False  # another copy of the item (a straggler backup, or its original) stored it first
        self._last = time.monotonic()

    def __call__(self, pipe: Pipe, i: int, t: Any, kwargs: dict) -> dict:
        if self.leases is not None:
            self.leases.progress()
            if i + 1 >= self.loop:  # the decode follows: a long one is not a hang
                self.leases.finishing()
        now = time.monotonic()
        if now - self._last >= defaults.PROGRESS_INTERVAL:
            self._last = now
            done = min(self.item_steps, round((i + 1) * self.item_steps / self.loop))
            try:
                stop = self.jobs.add_progress(self.job_id, self.indices, done - self.reported, i + 1, self.loop,
                                              self.worker)
                if stop:
                    self.cancelled, self.unwanted = stop == STOP_CANCELLED, stop == STOP_UNWANTED
                    pipe._interrupt = True
                self.reported = done
            except StateError:  # progress is best effort: the item itself goes on
                log.warning("job %s: progress not recorded", self.job_id, exc_info=True)
                return kwargs
            if self.faults is not None:
                self.faults.hit("step")
        return kwargs
