"""Where a chunk goes: run it here, leave it to a warm worker, pass it on, or hand it off.

Decisions only; `workers.runner` runs what this module lets through. A chunk passed on waits
`PASS_ON_DELAY` seconds in the sorted set `DELAYED_KEY` (durable, never a sleep on the worker, and
not a Celery countdown, whose held messages stall a solo worker's prefetch) and every worker's
heartbeat publishes the due ones (`release_due`). A chunk whose job is gone, ended or cancelled is
dropped instead (and the cancelled job's items settled).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import redis

from sdq import contract, defaults, families, fleet, scheduling, speed
from sdq.jobstore import JobStore
from sdq.records import Chunk, Item
from workers.speedometer import Speedometer

log = logging.getLogger(__name__)

Publish = Callable[[Chunk], None]
"""publish(chunk): send a chunk message to its queue."""

DELAYED_KEY = "sdq:delayed"
"""Sorted set of chunk messages (JSON) waiting to be published again, by due time."""


def delay(client: redis.Redis, chunk: Chunk, seconds: float) -> None:
    """Publish `chunk` again in `seconds` (by whichever worker's heartbeat comes first)."""
    client.zadd(DELAYED_KEY, {json.dumps(chunk.message(), sort_keys=True): time.time() + seconds})


def release_due(client: redis.Redis, publish: Publish, limit: int = 100) -> int:
    """Publish the delayed chunks that are due; returns how many. Each is taken by one worker only."""
    sent = 0
    for raw in client.zrangebyscore(DELAYED_KEY, "-inf", time.time(), start=0, num=limit):
        if client.zrem(DELAYED_KEY, raw):
            publish(Chunk.from_message(json.loads(raw)))
            sent += 1
    return sent


def _free_for(record: dict[str, Any], job_id: str) -> bool:
    """Whether a worker can help with `job_id` soon: idle, or already working on it (a faster worker
    busy with another job does not count when a slower one decides to leave work to faster ones)."""
    current = record.get("current_item")
    return not current or current.get("job") == job_id


@dataclass
class Router:
    """The routing decisions of one worker."""

    name: str
    jobs: JobStore
    publish: Publish
    models: list[str] = field(default_factory=list)  # `--models`; empty: any allowed model
    max_pixels: int = defaults.MAX_PIXELS
    memory_gb: float | None = None  # the device's total memory (None: unknown)
    speedometer: Speedometer | None = None  # this worker's measured speed (None: take every chunk whole)
    dtype: str = "fp32"  # the dtype it computes in (a model's memory need depends on it)

    def refusal(self, chunk: Chunk) -> str | None:
        """Why this worker must not run `chunk` (None: it may). A worker never runs an item it does
        not advertise: a model outside `--models`, images above `--max-pixels`, a job's
        `requires.min_memory_gb` or model family's memory need (`requires.memory`, for this worker's
        dtype and the images' size) above this device, or items it already ran out of memory on."""
        if self.models and chunk.model not in self.models:
            return f"model {chunk.model} is not in this worker's --models"
        p = chunk.params
        w, h = contract.output_size(chunk.pipeline, p["width"], p["height"])
        if w * h > self.max_pixels:
            return f"{w}x{h} images exceed this worker's --max-pixels {self.max_pixels}"
        need = families.required_gb(chunk.requires, self.dtype, w * h)
        if need and self.memory_gb is not None and self.memory_gb < need:
            return (f"{w}x{h} images of model {chunk.model} need {need:g} GB of device memory in {self.dtype}; "
                    f"this worker has {self.memory_gb:.1f} GB")
        if any(self.name in (it.oom_workers or ()) for it in chunk.items):
            return "this worker already ran out of memory on these items"
        return None

    def others(self, chunk: Chunk, avoid: set[str]) -> list[dict[str, Any]]:
        """Live workers, other than `avoid`, that serve the chunk's queue and model."""
        return [w for w in fleet.serving(fleet.live_workers(self.jobs.redis), chunk.queue or "", chunk.model)
                if w.get("name") not in avoid]

    def wanted(self, chunk: Chunk) -> bool:
        """Whether the chunk's job still wants work: False (and its queued items cancelled when the
        job was cancelled) for a job that is gone, ended or cancelled."""
        state, cancelled = self.jobs.job_status(chunk.job)
        if state is None or state in contract.TERMINAL_STATES:
            return False
        if cancelled:
            self.jobs.cancel_items(chunk.job, chunk.indices)
            return False
        return True

    def pass_on(self, chunk: Chunk, reason: str) -> None:
        """Offer `chunk` to the other workers again after `PASS_ON_DELAY` seconds, or drop it when
        its job no longer wants it."""
        if not self.wanted(chunk):
            log.info("job %s: dropping a chunk nobody needs any more (%s)", chunk.job, reason)
            return
        log.info("job %s: passing the chunk on: %s", chunk.job, reason)
        delay(self.jobs.redis, chunk, defaults.PASS_ON_DELAY)

    def defer_to_warm(self, chunk: Chunk, loaded: list[str]) -> bool:
        """Warm-model affinity: when this worker would have to load the chunk's model while another
        live worker serving the same queue holds it loaded and was idle at its last heartbeat,
        publish the chunk again (once per chunk) for that worker and return True."""
        model = chunk.model
        if chunk.deferred or not chunk.queue or model in loaded:
            return False
        warm = [w for w in self.others(chunk, {self.name})
                if model in (w.get("loaded_models") or ()) and not w.get("current_item")]
        if not warm:
            return False
        log.info("job %s: model %s is warm on idle worker(s) %s; leaving the chunk to them",
                 chunk.job, model, ", ".join(w["name"] for w in warm))
        self.publish(replace(chunk, deferred=True))
        return True

    def share(self, chunk: Chunk) -> int:
        """Speed-aware claiming (`sdq.scheduling.claim_count`): how many of the chunk's items to start
        here now. The rest is published again at once for faster workers; a chunk left to them for
        `DEFER_MAX_S` seconds is run by whoever holds it."""
        items, now = chunk.items, time.time()
        first = chunk.deferred_at or now
        if self.speedometer is None or not chunk.queue or now - first > scheduling.DEFER_MAX_S:
            return len(items)
        model, pipeline, params = chunk.model, chunk.pipeline, chunk.params
        failed_on = set(chunk.failed_on) - {self.name}  # a faster worker that failed it is no help
        records = [w for w in fleet.serving(fleet.live_workers(self.jobs.redis), chunk.queue, model)
                   if w.get("name") == self.name or (_free_for(w, chunk.job) and w.get("name") not in failed_on)]
        rates = speed.fleet_rates(records, model, pipeline, params)
        mine = (self.speedometer.rate(model, pipeline, params) if self.speedometer.knows(model, pipeline, params)
                else rates.get(self.name, self.speedometer.rate(model, pipeline, params)))
        others = [(rates[w["name"]], fleet.held(w.get("current_item"), now)) for w in records if w["name"] != self.name]
        take = scheduling.claim_count(mine, [r for r, _ in others], self.jobs.queued_count(chunk.job),
                                      len(items), [b for _, b in others])
        if take < len(items):
            log.info("job %s: starting %d of %d items here (%.3g Mpx-steps/s; other workers %s); the rest goes "
                     "back to the queue for faster workers", chunk.job, take, len(items), mine,
                     ", ".join(f"{r:.3g}" for r, _ in others))
            self.publish(chunk.with_items(items[take:], deferred_at=first))
        return take

    def can_hand_off(self, chunk: Chunk, batch: list[Item]) -> bool:
        """Out of memory even in low-memory mode: may this batch go to another worker (at most
        `OOM_HAND_OFFS` workers per item, and one must be live)?"""
        seen = {w for it in batch for w in it.oom_workers or ()} | {self.name}
        return bool(chunk.queue) and len(seen) <= defaults.OOM_HAND_OFFS and bool(self.others(chunk, seen))
