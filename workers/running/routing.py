"""Where a chunk goes: run it here, leave it to a warm worker, pass it on, or hand it off.

`Router` only decides: `decide` and `after_oom` are pure functions of the chunk, the fleet's
capability records (as `sdq.state.fleet.live_workers` returns them) and what the caller passes in (`now`,
the job's backlog), and return a small frozen decision; `workers.running.runner` acts on it in one place.

A chunk passed on waits `PASS_ON_DELAY` seconds in the outbox (`sdq.state.outbox`: durable, never a
sleep on the worker, and not a Celery countdown, whose held messages stall a solo worker's
prefetch) and every worker's heartbeat publishes the due ones (`sdq.celery_app.flush_outbox`). A
chunk whose job is gone, ended or cancelled is dropped instead (and the cancelled job's items
settled): `pass_on`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Union

import redis

from sdq import contract, defaults, options
from sdq.memory import Fit, fit, load_cast
from sdq.records import Chunk, Item
from sdq.scheduling import scheduling, speed
from sdq.state import fleet
from sdq.state.outbox import Outbox
from sdq.state.store import JobStore
from workers.running.speedometer import Speedometer

log = logging.getLogger(__name__)

Publish = Callable[[Chunk], None]
"""publish(chunk): send a chunk message to its queue."""

Record = dict[str, Any]
"""A worker's capability record, as `sdq.state.fleet.live_workers` returns it."""


# --- Decisions --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """Run the chunk's first `n` items here; `rest` (the others, if any) goes back to the queue at
    once for faster workers (`why` says so)."""

    n: int
    rest: Chunk | None = None
    why: str = ""


@dataclass(frozen=True)
class Defer:
    """Leave the chunk to other workers: publish `chunk` again now, then wait `pause_s` seconds
    before the next message."""

    chunk: Chunk
    why: str
    pause_s: float = 0.0


@dataclass(frozen=True)
class PassOn:
    """Offer `chunk` to the other workers again after `PASS_ON_DELAY` seconds (dropped when its job
    no longer wants it). `given_back`: it failed here a moment ago, and uses up one of its pass-ons."""

    chunk: Chunk
    reason: str
    given_back: bool = False


@dataclass(frozen=True)
class Fail:
    """End the items `failed` with `error`: nothing can serve them now."""

    error: str


@dataclass(frozen=True)
class HandOff:
    """Out of memory in low-memory mode: give the batch back as a new attempt for another worker."""

    error: str


@dataclass(frozen=True)
class Retry:
    """Out of memory: make the batch again with `per_call` images per call, in low-memory mode or not."""

    per_call: int
    low_memory: bool


Decision = Union[Run, Defer, PassOn, Fail]
"""What `Router.decide` answers for a chunk."""

NO_OTHER_WORKER = "no other live worker can take it: retry the job when one has joined"
"""How an out-of-memory failure that nobody else can take ends."""


def next_try(per_call: int, low_memory: bool) -> Retry | None:
    """After out of memory inside one batch: first one image per call (the same seeds, so the same
    images), then low-memory mode, one image per call; None when that was tried too."""
    if per_call > 1:
        return Retry(1, low_memory)
    if not low_memory:
        return Retry(1, True)
    return None


def _adapter_ids(chunk: Chunk) -> list[str]:
    """The weights the chunk's request options want warm, e.g. its LoRA adapters (`sdq.options.warm_ids`)."""
    return options.warm_ids(chunk.params)


def _holds(model: str, adapter_ids: list[str], models: Any, adapters: dict[str, list[str]]) -> bool:
    """Whether a worker with `models` loaded (and `adapters` loaded into them) has the model and
    every one of the adapters warm."""
    return model in models and all(a in (adapters.get(model) or ()) for a in adapter_ids)


def _free_for(record: Record, job_id: str) -> bool:
    """Whether a worker can help with `job_id` soon: idle, or already working on it (a faster worker
    busy with another job does not count when a slower one decides to leave work to faster ones)."""
    current = record.get("current_item")
    return not current or current.get("job") == job_id


@dataclass
class Router:
    """The routing decisions of one worker: pure functions of the chunk and the fleet's records."""

    name: str
    models: list[str] = field(default_factory=list)  # `--models`; empty: any allowed model
    max_pixels: int = defaults.MAX_PIXELS
    memory_gb: float | None = None  # the device's total memory (None: unknown)
    speedometer: Speedometer | None = None  # this worker's measured speed (None: take every chunk whole)
    dtype: str = "fp32"  # the dtype it computes in (a model's memory need depends on it)
    cast_from: str | None = None  # the dtype of weight files it casts at load, if counted (`sdq.memory.load_cast`)
    offload: str = "never"  # `--offload` as it applies to this device (`workers.loading.device.resolve_offload`)

    @property
    def by_speed(self) -> bool:
        """Whether it shares chunks by speed (then `decide` needs the job's backlog)."""
        return self.speedometer is not None

    def refusal(self, chunk: Chunk) -> str | None:
        """Why this worker must not run `chunk` (None: it may). A worker never runs an item it does
        not advertise: a model outside `--models`, images above `--max-pixels`, a job's
        `requires.min_memory_gb` or model family's memory need (`requires.memory`, for this worker's
        dtype, load-time cast and the images' size) above this device, or items it already ran out of memory on."""
        if self.models and chunk.model not in self.models:
            return f"model {chunk.model} is not in this worker's --models"
        p = chunk.params
        w, h = contract.item_size(chunk.pipeline, p)
        if w * h > self.max_pixels:
            return f"{w}x{h} images exceed this worker's --max-pixels {self.max_pixels}"
        room = self.fit(chunk)
        if not room.fits:
            cast = f" (loading casts {self.cast_from} weight files)" if self.cast_from else ""
            how = f", even with {room.mode} offload," if room.mode else ""
            return (f"the job needs {room.need_gb:g} GB of device memory{how} for {w}x{h} images of model "
                    f"{chunk.model} in {self.dtype}{cast}; this worker has {self.memory_gb:.1f} GB")
        if any(self.name in (it.oom_workers or ()) for it in chunk.items):
            return "this worker already ran out of memory on these items"
        return None

    def fit(self, chunk: Chunk) -> Fit:
        """How this worker would run `chunk`: the whole model on its device, or offloaded (`sdq.memory.fit`)."""
        w, h = contract.item_size(chunk.pipeline, chunk.params)
        return fit(chunk.requires, self.dtype, w * h, self.memory_gb, self.cast_from, self.offload)

    def others(self, chunk: Chunk, records: list[Record], avoid: set[str]) -> list[Record]:
        """Live workers, other than `avoid`, that serve the chunk's queue and model."""
        return [w for w in fleet.serving(records, chunk.queue or "", chunk.model) if w.get("name") not in avoid]

    def decide(self, chunk: Chunk, records: list[Record], loaded: list[str], now: float,
               backlog: int = 0, given_back: bool = False, adapters: dict[str, list[str]] | None = None) -> Decision:
        """Where `chunk` goes, given the fleet's `records`, the models loaded here (and the LoRA
        `adapters` loaded into them), the time, the job's queued items (`backlog`, read only when
        `by_speed`) and whether this worker gave the chunk back after an infrastructure error and has
        pass-ons left for it (`given_back`)."""
        # 1. Not for this worker (model, size, memory, out of memory before): pass it on, or fail it
        #    when it came back after running out of memory here and no other live worker can take it.
        reason = self.refusal(chunk)
        if reason is not None:
            avoid = {w for it in chunk.items for w in it.oom_workers or ()}
            if self.name in avoid and not self.others(chunk, records, avoid):
                error = next((it.oom_error for it in chunk.items if it.oom_error), None) or "out of memory"
                return Fail(f"{error}; no other live worker can take it (tried {', '.join(sorted(avoid))}): "
                            f"retry the job when one has joined")
            return PassOn(chunk, reason)
        # 2. This worker would run it offloaded: better run by an idle worker that holds the model whole.
        whole = self._whole_elsewhere(chunk, records)
        if whole:
            return Defer(replace(chunk, deferred=True), f"it runs offloaded here; idle worker(s) {', '.join(whole)} "
                                                        "hold the model whole: leaving the chunk to them",
                         scheduling.DEFER_PAUSE_S)
        # 3. Warm-model affinity: better run by an idle worker that holds the model (and the chunk's
        #    LoRA adapters) loaded.
        warm, what = self._warm_elsewhere(chunk, records, loaded, adapters or {})
        if warm:
            return Defer(replace(chunk, deferred=True), f"{what} warm on idle worker(s) "
                                                        f"{', '.join(warm)}; leaving the chunk to them")
        # 4. It failed here a moment ago (a broken device or driver fails again): others get the first chances.
        if given_back and self.others(chunk, records, {self.name}):
            failed_on = sorted({*chunk.failed_on, self.name})  # others do not leave it to this one
            return PassOn(replace(chunk, failed_on=failed_on),
                          "it failed on this worker a moment ago; another worker may take it", given_back=True)
        # 5. Faster workers would finish (part of) it sooner: that part goes back to the queue.
        return self._share(chunk, records, now, backlog)

    def _whole_elsewhere(self, chunk: Chunk, records: list[Record]) -> list[str]:
        """Names of the idle live workers serving the chunk's queue that would hold its model whole, when
        this worker would offload it (once per chunk: a chunk left to them is run by whoever takes it)."""
        if chunk.deferred or not chunk.queue or self.fit(chunk).mode is None:
            return []
        w, h = contract.item_size(chunk.pipeline, chunk.params)
        avoid = {self.name, *chunk.failed_on, *(n for it in chunk.items for n in it.oom_workers or ())}
        out = []
        for rec in self.others(chunk, records, avoid):
            dtype = rec.get("dtype") or "fp32"
            room = fit(chunk.requires, dtype, w * h, rec.get("memory_total_gb"), load_cast(rec.get("device") or "", dtype),
                       rec.get("offload") or "never")
            if not rec.get("current_item") and room.fits and room.mode is None and w * h <= (rec.get("max_pixels") or 0):
                out.append(rec["name"])
        return out

    def _warm_elsewhere(self, chunk: Chunk, records: list[Record], loaded: list[str],
                        adapters: dict[str, list[str]]) -> tuple[list[str], str]:
        """Names of the idle live workers serving the chunk's queue that hold its model and LoRA
        adapters loaded, when this worker would have to load some of them (once per chunk); failing
        that, the ones holding the model when this worker does not. Also what is warm there."""
        wanted = _adapter_ids(chunk)
        if chunk.deferred or not chunk.queue or _holds(chunk.model, wanted, loaded, adapters):
            return [], ""
        idle = [w for w in self.others(chunk, records, {self.name}) if not w.get("current_item")]
        if wanted:
            both = [w["name"] for w in idle
                    if _holds(chunk.model, wanted, w.get("loaded_models") or (), w.get("loaded_adapters") or {})]
            if both:
                return both, f"model {chunk.model} with {options.warm_label(chunk.params)} is"
        if chunk.model in loaded:
            return [], ""
        return [w["name"] for w in idle if chunk.model in (w.get("loaded_models") or ())], f"model {chunk.model} is"

    def _share(self, chunk: Chunk, records: list[Record], now: float, backlog: int) -> Run | Defer:
        """Speed-aware claiming (`sdq.scheduling.scheduling.claim_count`): how many of the chunk's items to start
        here now. The rest is published again at once for faster workers; a chunk left to them for
        `DEFER_MAX_S` seconds is run by whoever holds it."""
        items = chunk.items
        first = chunk.deferred_at or now
        if self.speedometer is None or not chunk.queue or now - first > scheduling.DEFER_MAX_S:
            return Run(len(items))
        model, pipeline, params = chunk.model, chunk.pipeline, chunk.params
        failed_on = set(chunk.failed_on) - {self.name}  # a faster worker that failed it is no help
        mates = [w for w in fleet.serving(records, chunk.queue, model)
                 if w.get("name") == self.name or (_free_for(w, chunk.job) and w.get("name") not in failed_on)]
        rates = speed.fleet_rates(mates, model, pipeline, params)
        mine = (self.speedometer.rate(model, pipeline, params) if self.speedometer.knows(model, pipeline, params)
                else rates.get(self.name, self.speedometer.rate(model, pipeline, params)))
        others = [(rates[w["name"]], fleet.held(w.get("current_item"), now)) for w in mates if w["name"] != self.name]
        take = scheduling.claim_count(mine, [r for r, _ in others], backlog, len(items), [b for _, b in others])
        if take == len(items):
            return Run(take)
        why = (f"starting {take} of {len(items)} items here ({mine:.3g} Mpx-steps/s; other workers "
               f"{', '.join(f'{r:.3g}' for r, _ in others)}); the rest goes back to the queue for faster workers")
        rest = chunk.with_items(items[take:], deferred_at=first)
        if take == 0:  # not straight back to the chunk just left to faster workers
            return Defer(rest, why, scheduling.DEFER_PAUSE_S)
        return Run(take, rest, why)

    def after_oom(self, chunk: Chunk, batch: list[Item], records: list[Record], error: str) -> HandOff | Fail:
        """Out of memory even in low-memory mode (`next_try` gave up): hand the batch to another
        worker (at most `OOM_HAND_OFFS` workers per item, and one must be live), else fail it."""
        seen = {w for it in batch for w in it.oom_workers or ()} | {self.name}
        if chunk.queue and len(seen) <= defaults.OOM_HAND_OFFS and self.others(chunk, records, seen):
            return HandOff(error)
        return Fail(f"{error}; {NO_OTHER_WORKER}")


# --- Passing a chunk on (through the outbox) ---------------------------------------------------

def delay(client: redis.Redis, chunk: Chunk, seconds: float) -> None:
    """Publish `chunk` again in `seconds` (from the outbox, by whichever worker's heartbeat comes first)."""
    Outbox(client).add_chunk(chunk.message(), time.time() + seconds)


def wanted(jobs: JobStore, chunk: Chunk) -> bool:
    """Whether the chunk's job still wants work: False (and its queued items cancelled when the
    job was cancelled) for a job that is gone, ended or cancelled."""
    state, cancelled = jobs.job_status(chunk.job)
    if state is None or state in contract.TERMINAL_STATES:
        return False
    if cancelled:
        jobs.cancel_items(chunk.job, chunk.indices)
        return False
    return True


def pass_on(jobs: JobStore, chunk: Chunk, reason: str) -> None:
    """Offer `chunk` to the other workers again after `PASS_ON_DELAY` seconds, or drop it when its
    job no longer wants it."""
    if not wanted(jobs, chunk):
        log.info("job %s: dropping a chunk nobody needs any more (%s)", chunk.job, reason)
        return
    log.info("job %s: passing the chunk on: %s", chunk.job, reason)
    delay(jobs.redis, chunk, defaults.PASS_ON_DELAY)
