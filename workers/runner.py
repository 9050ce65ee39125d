"""Running one task message (a chunk of items): claim, batch, generate, hand off to upload."""
from __future__ import annotations

import io
import logging
import os
import time
from concurrent.futures import Future
from typing import Any, Callable

from PIL import Image

from sdq import __version__, contract, defaults, fleet
from sdq.exceptions import ModelError
from sdq.infotext import SAMPLER_NAMES, format_infotext
from sdq.jobstore import JobStore
from workers.device import Device
from workers.generation import Generated, generate, loop_steps
from workers.pipelines import OUT_OF_MEMORY, OutOfMemory, PipelineCache, is_fatal_device_error
from workers import simulate, watermark
from workers.uploader import Uploader

log = logging.getLogger(__name__)


class StepProgress:
    """`callback_on_step_end` hook: throttled progress writes and the cooperative cancel check."""

    def __init__(self, jobs: JobStore, job_id: str, indices: list[int], item_steps: int, loop: int) -> None:
        self.jobs, self.job_id, self.indices = jobs, job_id, indices
        self.item_steps, self.loop = item_steps, loop
        self.reported = 0
        self.cancelled = False
        self._last = time.monotonic()

    def __call__(self, pipe, i: int, t, kwargs: dict) -> dict:
        now = time.monotonic()
        if now - self._last >= defaults.PROGRESS_INTERVAL:
            self._last = now
            done = min(self.item_steps, round((i + 1) * self.item_steps / self.loop))
            delta, self.reported = done - self.reported, done
            if self.jobs.add_progress(self.job_id, self.indices, delta, i + 1, self.loop):
                self.cancelled = True
                pipe._interrupt = True
        return kwargs


def infotext_for(chunk: dict[str, Any], item: dict[str, Any], size: tuple[int, int], device: Device,
                 worker: str, watermarked: bool = False, dtype: str | None = None,
                 nsfw: bool | None = None) -> str:
    """The A1111 infotext of one result: every parameter needed to make it again, the dtype the UNet
    ran in (`dtype`, read from the pipeline) and the safety checker's verdict (None: no checker ran)."""
    p, task = chunk["params"], chunk["pipeline"]
    image_size = f"{p['width']}x{p['height']}" if task == "upscale" else None
    fields: dict[str, object] = {
        "Steps": p["steps"], "Sampler": SAMPLER_NAMES.get(p["scheduler"], p["scheduler"]),
        "CFG scale": p["guidance_scale"], "Seed": item["seed"], "Size": f"{size[0]}x{size[1]}",
        "Model": chunk["model"], "Pipeline": task,
        "Denoising strength": p["strength"] if task in ("img2img", "depth2img") else None,
        "Noise level": p["noise_level"] if task == "upscale" else None,
        "Init image": item.get("init_image"), "Input size": image_size,
        "Watermark": watermark.LABEL if watermarked else None,
        "Safety checker": None if nsfw is None else ("flagged" if nsfw else "passed"),
        "Device": device.device, "Dtype": dtype or device.dtype, "Worker": worker, "Job": chunk["job"],
        "Version": f"sdq {__version__}",
    }
    return format_infotext(item["prompt"], item.get("negative_prompt") or "", fields)


class Runner:
    """Executes chunks on one device with warm pipelines. One per worker process."""

    def __init__(self, name: str, device: Device, cache: PipelineCache, jobs: JobStore, store,
                 uploader: Uploader, max_batch: int = 1) -> None:
        self.name, self.device, self.cache = name, device, cache
        self.jobs, self.store, self.uploader = jobs, store, uploader
        self.max_batch = max(1, max_batch)
        self.items_done = 0
        self.current: dict[str, Any] | None = None
        self.debug_oom_pixels: int | None = None  # testing aid, see `_check_debug_budget`
        self.debug_fatal_after: int | None = None  # testing aid: a sticky device error after N calls
        self._debug_memory: simulate.SimulatedMemory | None = None
        self._debug_fatal: simulate.SimulatedFatalError | None = None
        self.publish: Callable[[dict[str, Any]], None] | None = None  # sends a chunk message (hand-off)
        self.announce: Callable[[], None] | None = None  # publishes the capability record (idle again)
        self.models: list[str] = []  # the models this worker may load (`--models`); empty: any allowed

    def run_chunk(self, chunk: dict[str, Any]) -> None:
        """Make every still-wanted item of `chunk`; returns once all are uploaded."""
        job_id, task = chunk["job"], chunk["pipeline"]
        by_index = {it["index"]: it for it in chunk["items"]}
        # 0. A model outside this worker's --models, or items it already ran out of memory on: pass on.
        if self.models and chunk["model"] not in self.models:
            self._pass_on_model(chunk)
            return
        if any(self.name in (it.get("oom_workers") or ()) for it in chunk["items"]):
            self._pass_on(chunk)
            return
        # 0b. A model this worker does not hold, while an idle worker holds it warm: leave it to that one.
        if self._defer_to_warm_worker(chunk):
            return
        # 1. Claim the items (skips ones already done, cancelled or gone).
        todo = self.jobs.start_items(job_id, list(by_index), self.name, self.device.device, self.device.dtype,
                                     on_job_finished=self.uploader.on_job_finished)
        if not todo:
            return
        self.current = {"job": job_id, "items": todo}
        futures: list[Future] = []
        try:
            # 2. Model, loaded once per process.
            t0 = time.perf_counter()
            try:
                pipe, loaded = self.cache.get(chunk["model"], task)
            except ModelError as exc:
                self._fail(job_id, todo, str(exc))
                return
            load_s = time.perf_counter() - t0
            # 3. Micro-batches of up to max_batch items sharing all parameters.
            for start in range(0, len(todo), self.max_batch):
                batch = [by_index[i] for i in todo[start:start + self.max_batch]]
                if self.jobs.is_cancelled(job_id):
                    self._cancel(job_id, todo[start:])
                    break
                futures += self._run_batch(chunk, pipe, loaded, batch, load_s)
                load_s = 0.0
        finally:
            # 4. The chunk is acknowledged only after its results are stored.
            for fut in futures:
                fut.result()
            self.current = None
            self._announce()

    def _announce(self) -> None:
        """Tell the fleet at once that this worker is free (and which models it holds), so warm-model
        affinity does not wait for the next heartbeat."""
        if self.announce is not None:
            try:
                self.announce()
            except Exception:  # noqa: BLE001 - the heartbeat publishes it again anyway
                log.warning("could not publish the capability record", exc_info=True)

    def _run_batch(self, chunk, pipe, loaded, batch: list[dict[str, Any]], load_s: float) -> list[Future]:
        job_id, task, params = chunk["job"], chunk["pipeline"], chunk["params"]
        indices = [it["index"] for it in batch]
        progress = StepProgress(self.jobs, job_id, indices, params["steps"], loop_steps(task, params))
        t0 = time.perf_counter()
        try:
            images = self._init_images(batch) if task != "txt2img" else None
            made = self._generate(pipe, loaded, task, params, batch, images, progress)
        except Exception as exc:  # noqa: BLE001 - a failed item never takes the worker down...
            log.exception("job %s items %s failed", job_id, indices)
            error = f"{type(exc).__name__}: {exc}"
            if is_fatal_device_error(exc):  # ...but a broken device does: fail the batch, exit, be restarted
                self._fail(job_id, indices, f"device error on worker {self.name} ({self.device.device}): "
                                            f"{error}; the worker exits to be restarted", progress.reported)
                self._exit_on_fatal_device_error(error)
            oom = exc.fields if isinstance(exc, OutOfMemory) else {}
            if isinstance(exc, OUT_OF_MEMORY):
                error = (f"out of memory on worker {self.name} ({self.device.device}, {self.device.dtype}) "
                         f"{'in low-memory mode' if oom.get('low_memory') else 'with one image per call'}: {error}")
                if self._hand_off(chunk, batch, error, progress.reported):
                    return []
                error += "; no other live worker can take it: retry the job when one has joined"
            self._fail(job_id, indices, error, progress.reported, oom)
            return []
        gen_s = time.perf_counter() - t0
        if progress.cancelled:
            self._cancel(job_id, indices, progress.reported)
            return []
        futures = []
        for item, image, nsfw in zip(batch, made.images, made.nsfw):
            fields = {
                "worker": self.name, "device": self.device.device, "dtype": made.dtype,
                "duration_s": round((gen_s + load_s) / len(batch), 4),
                "timings": {"load": round(load_s, 4), "generate": round(gen_s / len(batch), 4)},
                "batch": made.per_call, "nsfw": nsfw,
                **made.oom_fields(),
            }
            marked = bool(chunk.get("watermark")) and watermark.can_mark(image)
            info = infotext_for(chunk, item, image.size, self.device, self.name, marked, made.dtype, nsfw)
            futures.append(self.uploader.submit(job_id, item["index"], image, info, {**fields, "watermark": marked},
                                                progress.reported, watermark.embed if marked else None))
            self.items_done += 1
        return futures

    def _others(self, chunk: dict[str, Any], avoid: set[str]) -> list[dict[str, Any]]:
        """Live workers, other than `avoid`, that serve the chunk's queue and model."""
        return [w for w in fleet.serving(fleet.live_workers(self.jobs.r), chunk.get("queue", ""), chunk["model"])
                if w.get("name") not in avoid]

    def _defer_to_warm_worker(self, chunk: dict[str, Any]) -> bool:
        """Warm-model affinity: when this worker would have to load the chunk's model while another
        live worker serving the same queue holds it loaded and was idle at its last heartbeat,
        publish the chunk again (once per chunk) for that worker, which is already waiting on the
        queue, and return True."""
        model = chunk["model"]
        if chunk.get("deferred") or self.publish is None or "queue" not in chunk or model in self.cache.loaded():
            return False
        warm = [w for w in self._others(chunk, {self.name})
                if model in (w.get("loaded_models") or ()) and not w.get("current_item")]
        if not warm:
            return False
        log.info("job %s: model %s is warm on idle worker(s) %s; leaving the chunk to them",
                 chunk["job"], model, ", ".join(w["name"] for w in warm))
        self.publish({**chunk, "deferred": True})
        return True

    def _hand_off(self, chunk: dict[str, Any], batch: list[dict[str, Any]], error: str, reported: int) -> bool:
        """Out of memory even in low-memory mode: give the batch back to the queue for another
        worker (at most `OOM_HAND_OFFS` times per item). False when no other worker can take it."""
        seen = {w for it in batch for w in it.get("oom_workers") or ()} | {self.name}
        if (self.publish is None or "queue" not in chunk or len(seen) > defaults.OOM_HAND_OFFS
                or not self._others(chunk, seen)):
            return False
        indices = self.jobs.hand_off(chunk["job"], [it["index"] for it in batch], self.name, error, reported)
        if indices:
            items = [{**it, "oom_workers": [*(it.get("oom_workers") or ()), self.name], "oom_error": error}
                     for it in batch if it["index"] in indices]
            self.publish({**chunk, "items": items})
            log.warning("job %s items %s: out of memory in low-memory mode; handed to another worker",
                        chunk["job"], indices)
        return True

    def _republish(self, chunk: dict[str, Any]) -> bool:
        """Publish the chunk to its queue again, after a pause (so workers that cannot take it do not
        bounce it at full speed); False when this message cannot be republished."""
        if self.publish is None or "queue" not in chunk:
            return False
        time.sleep(defaults.HAND_OFF_PAUSE)
        self.publish(chunk)
        return True

    def _pass_on_model(self, chunk: dict[str, Any]) -> None:
        """A model this worker may not load (`--models`): back to the queue, where it waits for a
        worker that may (the producer warned at submit if none was live)."""
        log.debug("job %s: model %s is not in this worker's --models; passing the chunk on",
                  chunk["job"], chunk["model"])
        if not self._republish(chunk):
            self._fail(chunk["job"], [it["index"] for it in chunk["items"]],
                       f"worker {self.name} may not load model {chunk['model']} (--models)")

    def _pass_on(self, chunk: dict[str, Any]) -> None:
        """A chunk this worker ran out of memory on came back to it: publish it again for the others,
        or fail it if none is left."""
        avoid = {w for it in chunk["items"] for w in it.get("oom_workers") or ()}
        if self._others(chunk, avoid) and self._republish(chunk):
            return
        error = next((it.get("oom_error") for it in chunk["items"] if it.get("oom_error")), None) or "out of memory"
        self._fail(chunk["job"], [it["index"] for it in chunk["items"]],
                   f"{error}; no other live worker can take it (tried {', '.join(sorted(avoid))}): retry the "
                   f"job when one has joined")

    def _generate(self, pipe, loaded, task: str, params: dict[str, Any], batch: list[dict[str, Any]],
                  images: list[Any] | None, progress: StepProgress) -> Generated:
        """Make `batch` with the out-of-memory fallbacks (and the testing aids' checks, if set)."""
        check = None
        if self.debug_oom_pixels or self.debug_fatal_after is not None:
            def check(n: int, low_memory: bool) -> None:
                self._check_debug_budget(task, params, n, low_memory)
        return generate(self.cache, pipe, loaded, task, params, [it["prompt"] for it in batch],
                        [it.get("negative_prompt") or "" for it in batch], [it["seed"] for it in batch],
                        images, progress, check)

    def _check_debug_budget(self, task: str, params: dict[str, Any], n: int, low_memory: bool) -> None:
        """Testing aids, before each pipeline call: `sdq worker --debug-oom-pixels N` behaves like a
        device whose memory holds N output pixels per call (4N in low-memory mode) and whose failed
        calls keep their memory while anything references them (`simulate.SimulatedMemory`);
        `--debug-fatal-after N` like a device that breaks for good after N calls."""
        if self.debug_fatal_after is not None:
            if self._debug_fatal is None:
                self._debug_fatal = simulate.SimulatedFatalError(self.debug_fatal_after)
            self._debug_fatal.call()
        if self.debug_oom_pixels:
            if self._debug_memory is None or self._debug_memory.pixels != self.debug_oom_pixels:
                self._debug_memory = simulate.SimulatedMemory(self.debug_oom_pixels)
            w, h = contract.output_size(task, params["width"], params["height"])
            self._debug_memory.call(n, w, h, low_memory)

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

    def _init_images(self, batch: list[dict[str, Any]]) -> list[Any]:
        return [Image.open(io.BytesIO(self.store.get(it["init_image"]))).convert("RGB") for it in batch]

    def _fail(self, job_id: str, indices: list[int], error: str, steps_reported: int = 0,
              extra: dict[str, Any] | None = None) -> None:
        for index in indices:
            if self.jobs.finish_item(job_id, index, "failed", {**(extra or {}), "error": error}, steps_reported):
                self.uploader.on_job_finished(job_id)

    def _cancel(self, job_id: str, indices: list[int], steps_reported: int = 0) -> None:
        for index in indices:
            if self.jobs.finish_item(job_id, index, "cancelled", {}, steps_reported):
                self.uploader.on_job_finished(job_id)
