"""Running one task message (a chunk of items): claim, batch, generate, hand off to upload.

Outcomes of a chunk: an item error (a pipeline exception) fails just those items; an
infrastructure error (Redis, S3 beyond its outage limit, a model that will not load or move to
the device, a pipeline a failed call left changed for good) gives the items back and raises
`WorkLost`, so the message is delivered again and never acknowledged (`workers.tasks`); each
delivery counts an attempt, and an item tried `max_attempts` times is failed with its last error (a
poison item never loops)."""
from __future__ import annotations

import functools
import io
import logging
import os
import time
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from PIL import Image

from sdq import defaults, pipelines
from sdq.exceptions import ModelError, WorkLost
from sdq.records import Chunk, Item
from sdq.scheduling import scheduling, speed
from sdq.scheduling.speed import loop_steps
from sdq.state.errors import StateError
from storage import StorageUnavailable
from workers.loading.device import Device
from workers.running.generation import Batch, Generated, generate
from workers.running.infotext import infotext_for
from workers.running.parts import (NORMAL, Backup, Cancelled, Failed, Mode, Outcome, OutOfMemoryEnd, Outputs, Presence,
                           RunOptions)
from workers.loading.offload import OUT_OF_MEMORY
from workers.loading.pipelines import Loaded, OutOfMemory, PipelineCache, is_fatal_device_error
from workers.running.progress import Pipe, StepProgress
from workers.running.retry import retry_redis
from workers.running.routing import Decision, Defer, Fail, HandOff, PassOn, Run, delay, pass_on
from workers.running.warmstate import PipelineBroken, undo_or_drop
from workers import options as worker_options
from workers.testing import simulate
from workers.running import watermark

log = logging.getLogger(__name__)


class Runner:
    """Executes chunks on one device with warm pipelines. One per worker process, built once by
    `workers.app`; `workers.running.routing.Router` decides where each chunk goes, the runner acts on it."""

    def __init__(self, name: str, device: Device, cache: PipelineCache, outputs: Outputs, presence: Presence,
                 options: RunOptions) -> None:
        self.name, self.device, self.cache = name, device, cache
        self.jobs, self.store, self.uploader = outputs.jobs, outputs.store, outputs.uploader
        self.finalize, self.results = outputs.finalize, outputs.results
        self.router, self.publish, self.leases = presence.router, presence.publish, presence.leases
        self.activity, self.announce, self.announce_by = presence.activity, presence.announce, presence.announce_by
        self.faults, self.max_attempts = options.faults, options.max_attempts
        self.max_batch = max(1, options.max_batch)
        self.simulated = simulate.SimulatedDevice.of(options.debug_oom_pixels, options.debug_fatal_after)
        self.lost: dict[tuple[str, tuple[int, ...]], int] = {}  # chunks given back here -> pass-ons left
        self._gens: dict[int, int] = {}  # the attempt (`gen`) of each item of the chunk here: what it may record

    def run_chunk(self, chunk: Chunk) -> None:
        """Make every still-wanted item of `chunk`; returns once all are stored. Raises `WorkLost`
        after giving the items back when an infrastructure error stopped the run."""
        if chunk.backup:
            return self._run_backup(chunk)
        self._gens = {it.index: it.gen for it in chunk.items}
        # 0. Where the chunk goes: the router decides from one look at the fleet, the runner acts.
        now = time.time()
        backlog = retry_redis(lambda: self.jobs.queued_count(chunk.job)) if self.router.by_speed else 0
        decision = self.router.decide(chunk, self._fleet(), self.cache.loaded(), now, backlog,
                                      given_back=self._chunk_id(chunk) in self.lost,
                                      adapters=self.cache.loaded_adapters())
        take = self._apply(chunk, decision)
        if take:
            self._run(chunk.with_items(chunk.items[:take]))

    def _apply(self, chunk: Chunk, decision: Decision) -> int:
        """Act on the router's decision for `chunk`: how many of its items to run here now (0: none)."""
        match decision:
            case Run(n=n, rest=rest, why=why):
                if rest is not None:
                    log.info("job %s: %s", chunk.job, why)
                    self.publish(rest)
                return n
            case Defer(chunk=again, why=why, pause_s=pause_s):
                log.info("job %s: %s", chunk.job, why)
                self.publish(again)
                if pause_s:
                    time.sleep(pause_s)
            case PassOn(chunk=again, reason=reason, given_back=given_back):
                if given_back:
                    self._spend_pass_on(chunk)
                pass_on(self.jobs, again, reason)
            case Fail(error=error):
                self._end(NORMAL, chunk, chunk.indices, Failed(error))
            case _:
                raise TypeError(f"not a routing decision: {decision!r}")
        return 0

    def _fleet(self) -> list[dict[str, Any]]:
        """The live workers' capability records, read once per decision."""
        return retry_redis(self.jobs.live_workers)

    def _run(self, chunk: Chunk) -> None:
        """Claim the chunk's items, make them, and return once their results are stored and recorded."""
        # 1. Claim the items of this attempt (skips ones done, cancelled or superseded). Items a live
        #    worker is running (a duplicate delivery) stay with it; a copy of their message comes back
        #    later in case that worker lost them without a trace.
        job_id = chunk.job
        wanted = [(it.index, it.gen) for it in chunk.items]
        now = time.time()  # one start time for every try: a repeat after a lost reply starts nothing twice
        started = retry_redis(lambda: self.jobs.start_run(
            job_id, wanted, self.name, self.device.device, self.device.dtype, max_attempts=self.max_attempts,
            now=now))
        if started.ended:
            self.finalize(job_id)
        if started.held:
            held = chunk.with_items([it for it in chunk.items if it.index in set(started.held)])
            retry_redis(lambda: delay(self.jobs, held, defaults.HELD_RECHECK))
        todo = started.run
        if not todo:
            return
        self.activity.current = self._current(chunk, todo)
        self.leases.busy()
        self._announce()  # the fleet record names the items now: a duplicate delivery leaves them here
        futures: list[Future] = []
        try:
            self._run_items(chunk, todo, futures, NORMAL)
            # 2. The chunk is acknowledged only after its results are stored and recorded.
            for fut in futures:
                fut.result()
            self.faults.hit("ack")
        except Exception as exc:
            self._give_back(job_id, todo, futures, exc)
            self._remember_lost(chunk)
            raise WorkLost(f"job {job_id} items {todo}: {type(exc).__name__}: {exc}") from exc
        finally:
            self.activity.current = None
            self.leases.idle()
            self._announce()

    def _current(self, chunk: Chunk, todo: list[int]) -> dict[str, Any]:
        """What the capability record says this worker is doing (what an idle worker needs to decide
        on a straggler backup): the job, its items here, and the kind of item."""
        return {"job": chunk.job, "items": todo, "queue": chunk.queue, "model": chunk.model,
                "pipeline": chunk.pipeline, "params": chunk.params}

    def _run_backup(self, chunk: Chunk) -> None:
        """A straggler backup (`workers.running.backups`): run one item another worker is running; the first
        copy to store it wins (`JobStore.claim_result`), the other stops at its next step. A backup
        that fails or loses changes nothing: the item stays with its original run."""
        job_id, index = chunk.job, chunk.items[0].index
        record = next(iter(self.jobs.item_records(job_id, [index])), None)
        if not record or record.state != "running" or (record.backup or {}).get("worker") != self.name:
            return
        mode = Backup(job_id, index, record.worker)
        log.info("job %s item %d: straggler backup of the run on %s", job_id, index, mode.original_worker)
        self._gens = {index: record.gen}
        self.activity.current = self._current(chunk, [index])
        self._announce()  # names the item: a claim this backup takes lasts while it runs
        futures: list[Future] = []
        try:
            self._run_items(chunk, [index], futures, mode)
            for fut in futures:
                fut.result()
        except Exception:  # noqa: BLE001 - the original run still owns the item
            log.warning("job %s item %d: the backup run failed; the original run goes on", job_id, index,
                        exc_info=True)
        finally:
            self.activity.current = None
            self._announce()

    def _run_items(self, chunk: Chunk, todo: list[int], futures: list[Future], mode: Mode) -> None:
        """Answer the items made before from the result cache; load the model, then generate the rest in
        micro-batches (uploads queued in `futures`)."""
        chunk = worker_options.with_defaults(chunk)  # the operator's option defaults (`--option-default`)
        job_id, task = chunk.job, chunk.pipeline
        by_index = {it.index: it for it in chunk.items}
        if self.results is not None:  # items made before are copied from storage: no model load for them
            todo = self.results.serve(chunk, todo)
            if not todo:
                return
        t0 = time.perf_counter()
        self.faults.hit("load")
        try:
            pipe, loaded = self.cache.get(chunk.model, task, chunk.params, self.router.fit(chunk).mode)  # offloaded?
            loaded.check_scheduler(chunk.params["scheduler"])
            applied = worker_options.apply(self.cache, pipe, loaded, chunk.params)  # e.g. LoRA adapters on
        except ModelError as exc:  # the model (or an adapter) itself is wrong (or not for these parameters)
            self._end(mode, chunk, todo, Failed(str(exc)))
            return
        broken = False
        try:
            self.leases.progress()
            load_s = time.perf_counter() - t0
            for start in range(0, len(todo), self.max_batch):
                batch = [by_index[i] for i in todo[start:start + self.max_batch]]
                if retry_redis(lambda: self.jobs.is_cancelled(job_id)):
                    self._end(mode, chunk, todo[start:], Cancelled())
                    break
                self.faults.hit("batch", [it.prompt for it in batch])
                futures += self._run_batch(chunk, pipe, loaded, batch, load_s, mode, applied)
                load_s = 0.0
        except PipelineBroken:  # a failed call left the pipeline changed: the items go back (`_run`)
            broken = True
            raise
        finally:  # the options off again, also after an exception; a broken pipeline is dropped
            undo_or_drop(self.cache, pipe, loaded, chunk.params, broken)

    def _chunk_id(self, chunk: Chunk) -> tuple[str, tuple[int, ...]]:
        return chunk.job, tuple(chunk.indices)

    def _remember_lost(self, chunk: Chunk) -> None:
        """Remember a chunk given back after an infrastructure error here (a broken device or
        driver fails again): when it comes back, another live worker gets the first chances."""
        if len(self.lost) > 1000:
            self.lost.clear()
        self.lost[self._chunk_id(chunk)] = defaults.LOST_PASS_ONS

    def _spend_pass_on(self, chunk: Chunk) -> None:
        """Use up one of the pass-ons of a chunk this worker gave back; after the last one it runs the
        chunk again itself, so every worker failing it still ends it."""
        key = self._chunk_id(chunk)
        left = self.lost.pop(key, 0)
        if left > 1:
            self.lost[key] = left - 1

    def _give_back(self, job_id: str, todo: list[int], futures: list[Future], exc: Exception) -> None:
        """After an infrastructure error: let started uploads end, then put the items still running
        here back in `queued` with the error (best effort: if Redis is down, the redelivered message
        finds them `running` and takes them over)."""
        log.error("job %s items %s: %s: %s; giving them back to the queue", job_id, todo, type(exc).__name__, exc,
                  exc_info=exc)
        for fut in futures:
            try:
                fut.result()
            except Exception:  # noqa: BLE001 - already reported by the upload thread
                pass
        try:
            retry_redis(lambda: self.jobs.release(job_id, todo, self.name, f"{type(exc).__name__}: {exc}"))
        except StateError:
            log.warning("job %s: could not give items %s back; their message will be delivered again", job_id, todo)

    def _announce(self) -> None:
        """Tell the fleet at once what this worker does (free, which models it holds, what it starts)."""
        try:
            self.announce()
        except Exception:  # noqa: BLE001 - the heartbeat publishes it again anyway
            log.warning("could not publish the capability record", exc_info=True)

    def _run_batch(self, chunk: Chunk, pipe: Pipe, loaded: Loaded, batch: list[Item], load_s: float,
                   mode: Mode, applied: dict[str, Any] | None = None) -> list[Future]:
        job_id, task, params = chunk.job, chunk.pipeline, chunk.params
        indices = [it.index for it in batch]
        progress = StepProgress(self.jobs, job_id, indices, params["steps"], loop_steps(task, params),
                                self.leases, self.faults, self.name)
        if self.activity.current is not None:
            since = time.time()
            expected = round(len(batch) * speed.item_work(task, params) / self.activity.speed.rate(
                chunk.model, task, params), 3) if self.activity.speed is not None else None
            self.activity.current.update(running=indices, since=since, expected_s=expected)
            if expected is None or expected >= scheduling.BACKUP_MIN_RUN_S:
                self._announce()  # what it starts, now: idle workers decide backups from it at once
            else:  # no backup could start before it ran that long: published then if still running, else never
                self.announce_by(since + scheduling.BACKUP_MIN_RUN_S)
        t0 = time.perf_counter()
        try:
            images = self._images(task, batch, params)
            with self.faults.inside(pipe, [it.prompt for it in batch]):  # testing aid: faults in the call
                made = self._generate(pipe, loaded, task, params, batch, images, progress)
        except Exception as exc:  # noqa: BLE001 - a failed item never takes the worker down...
            if isinstance(exc, (StorageUnavailable, PipelineBroken)):  # S3 down beyond its outage limit (an upload
                raise  # read), a pipeline that must be loaded again: `_run` gives the items back
            log.exception("job %s items %s failed", job_id, indices)
            error = f"{type(exc).__name__}: {exc}"
            if is_fatal_device_error(exc):  # ...but a broken device does: fail the batch, exit, be restarted
                self._end(mode, chunk, indices, Failed(f"device error on worker {self.name} ({self.device.device}): "
                                                       f"{error}; the worker exits to be restarted"))
                self._exit_on_fatal_device_error(error)
            oom = exc.fields if isinstance(exc, OutOfMemory) else {}
            if isinstance(exc, OUT_OF_MEMORY):
                error = (f"out of memory on worker {self.name} ({self.device.device}, {self.device.dtype}) "
                         f"{'in low-memory mode' if oom.get('low_memory') else 'with one image per call'}: {error}")
                self._end(mode, chunk, indices, OutOfMemoryEnd(error, oom))
            else:
                self._end(mode, chunk, indices, Failed(error, oom))
            return []
        gen_s = time.perf_counter() - t0
        # a run stopped early (cancelled, or another copy won) says nothing about this worker's speed
        if self.activity.speed is not None and made.images and not (progress.cancelled or progress.unwanted):
            self.activity.speed.observe(chunk.model, task, params, len(made.images), gen_s)
        if progress.unwanted:
            log.info("job %s items %s: another run stored them first; this run stopped", job_id, indices)
            return []
        if progress.cancelled:
            self._end(mode, chunk, indices, Cancelled())
            return []
        futures = []
        for item, image, nsfw in zip(batch, made.images, made.nsfw):
            fields = {
                "worker": self.name, "device": self.device.device, "dtype": made.dtype,
                "backend": self.device.backend,
                "duration_s": round((gen_s + load_s) / len(batch), 4),
                "timings": {"load": round(load_s, 4), "generate": round(gen_s / len(batch), 4)},
                "batch": made.per_call, "nsfw": nsfw,
                **made.oom_fields(),
            }
            marked = chunk.watermark and watermark.can_mark(image)
            info = infotext_for(chunk, item, image.size, self.device, self.name, marked, made.dtype, nsfw,
                                applied)
            register = self.results.registrar(job_id, item.index) if self.results is not None else None
            futures.append(self.uploader.submit(job_id, item.index, image, info, {**fields, "watermark": marked},
                                                progress.reported, watermark.embed if marked else None, register,
                                                worker=self.name, gen=item.gen))
            self.activity.items_done += 1
        return futures

    def _end(self, mode: Mode, chunk: Chunk, indices: list[int], outcome: Outcome) -> None:
        """Settle the items this run stops on without a result: failed, cancelled, or handed to
        another worker after out of memory. A straggler backup settles nothing: the original run
        owns its item."""
        job_id = chunk.job
        if isinstance(mode, Backup):
            if isinstance(outcome, Failed):
                log.warning("job %s items %s: backup run failed (%s); the original run goes on", job_id, indices,
                            outcome.error)
            return
        match outcome:
            case Failed(error=error, extra=extra):
                self._finish(job_id, indices, "failed", {**(extra or {}), "error": error})
            case Cancelled():
                self._finish(job_id, indices, "cancelled", {})
            case OutOfMemoryEnd(error=error, extra=extra):
                batch = [it for it in chunk.items if it.index in indices]
                after = self.router.after_oom(chunk, batch, self._fleet(), error)
                if isinstance(after, HandOff):
                    self._hand_off(chunk, batch, after.error)
                else:
                    self._finish(job_id, indices, "failed", {**extra, "error": after.error})

    def _finish(self, job_id: str, indices: list[int], state: str, fields: dict[str, Any]) -> None:
        """Items end in `state` with `fields`; the job's finalisation is queued when that ended it."""
        for index in indices:
            if retry_redis(lambda: self.jobs.finish_item(job_id, index, state, fields, worker=self.name,
                                                         gen=self._gens.get(index, 0))):
                self.finalize(job_id)

    def _hand_off(self, chunk: Chunk, batch: list[Item], error: str) -> None:
        """Give the batch back to the queue for another worker, as a new attempt (its message recorded
        in the outbox in the same step, published here). If the job was cancelled meanwhile, the batch
        ends `cancelled`."""
        indices = [it.index for it in batch]

        def publish(pairs: list[tuple[int, int]]) -> None:
            handed = dict(pairs)
            self.faults.hit("handed_off")
            items = [replace(it, gen=handed[it.index], oom_workers=[*(it.oom_workers or ()), self.name],
                             oom_error=error) for it in batch if it.index in handed]
            self.publish(chunk.with_items(items))

        handed = dict(self.jobs.hand_off_and_publish(chunk.job, indices, self.name, error, publish))
        if handed:
            log.warning("job %s items %s: out of memory in low-memory mode; handed to another worker",
                        chunk.job, list(handed))
        elif self.jobs.is_cancelled(chunk.job):
            self._finish(chunk.job, indices, "cancelled", {})

    def _generate(self, pipe: Pipe, loaded: Loaded, task: str, params: dict[str, Any], batch: list[Item],
                  images: dict[str, list[Any]] | None, progress: StepProgress) -> Generated:
        """Make `batch` with the out-of-memory fallbacks (and the testing aids' checks, if set)."""
        check = functools.partial(self.simulated.check, task, params) if self.simulated is not None else None
        return generate(self.cache, pipe, loaded, task, params, [it.prompt for it in batch],
                        [it.negative_prompt or "" for it in batch], [it.seed for it in batch],
                        images, progress, check, Batch(progress.job_id, [it.index for it in batch]))

    def _exit_on_fatal_device_error(self, error: str) -> None:
        """After a sticky device error every later call fails too: finish the uploads already made,
        then exit non-zero so the supervisor starts a fresh process (the chunk's message is not
        acknowledged, so its items that did not run go back to the queue)."""
        log.critical("worker %s: sticky device error (%s); exiting with status %d to be restarted",
                     self.name, error, defaults.FATAL_EXIT_CODE)
        try:
            self.uploader.shutdown()
        finally:
            logging.shutdown()
            os._exit(defaults.FATAL_EXIT_CODE)

    def _images(self, task: str, batch: list[Item], params: dict[str, Any]) -> dict[str, list[Any]]:
        """Each image input of the pipeline: the items' uploads, in the mode its spec asks for (and the
        images the request options add, e.g. a control image)."""
        def load(key: str, mode: str) -> Image.Image:
            return Image.open(io.BytesIO(self.store.get(key))).convert(mode)

        out = {image.field: [load(it.image_key(image.field), image.mode) for it in batch]
               for image in pipelines.spec(task).images}
        return {**out, **worker_options.images(params, load, len(batch))}

