"""Running one task message (a chunk of items): claim, batch, generate, hand off to upload."""
from __future__ import annotations

import io
import logging
import time
from concurrent.futures import Future
from typing import Any

from PIL import Image

from sdq import __version__, defaults
from sdq.exceptions import ModelError
from sdq.infotext import SAMPLER_NAMES, format_infotext
from sdq.jobstore import JobStore
from workers.device import Device
from workers.pipelines import PipelineCache, loop_steps, run
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
                 worker: str) -> str:
    """The A1111 infotext of one result: every parameter needed to make it again."""
    p, task = chunk["params"], chunk["pipeline"]
    fields: dict[str, object] = {
        "Steps": p["steps"], "Sampler": SAMPLER_NAMES.get(p["scheduler"], p["scheduler"]),
        "CFG scale": p["guidance_scale"], "Seed": item["seed"], "Size": f"{size[0]}x{size[1]}",
        "Model": chunk["model"], "Pipeline": task,
        "Denoising strength": p["strength"] if task in ("img2img", "depth2img") else None,
        "Noise level": p["noise_level"] if task == "upscale" else None,
        "Init image": item.get("init_image"),
        "Device": device.device, "Dtype": device.dtype, "Worker": worker, "Job": chunk["job"],
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

    def run_chunk(self, chunk: dict[str, Any]) -> None:
        """Make every still-wanted item of `chunk`; returns once all are uploaded."""
        job_id, task = chunk["job"], chunk["pipeline"]
        by_index = {it["index"]: it for it in chunk["items"]}
        # 1. Claim the items (skips ones already done, cancelled or gone).
        todo = self.jobs.start_items(job_id, list(by_index), self.name, self.device.device, self.device.dtype)
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

    def _run_batch(self, chunk, pipe, loaded, batch: list[dict[str, Any]], load_s: float) -> list[Future]:
        job_id, task, params = chunk["job"], chunk["pipeline"], chunk["params"]
        indices = [it["index"] for it in batch]
        progress = StepProgress(self.jobs, job_id, indices, params["steps"], loop_steps(task, params))
        t0 = time.perf_counter()
        try:
            images = self._init_images(batch) if task != "txt2img" else None
            out = run(pipe, loaded, task, params, [it["prompt"] for it in batch],
                      [it.get("negative_prompt") or "" for it in batch], [it["seed"] for it in batch],
                      images, progress)
        except Exception as exc:  # noqa: BLE001 - a failed item never takes the worker down
            log.exception("job %s items %s failed", job_id, indices)
            self._fail(job_id, indices, f"{type(exc).__name__}: {exc}", progress.reported)
            return []
        gen_s = time.perf_counter() - t0
        if progress.cancelled:
            self._cancel(job_id, indices, progress.reported)
            return []
        futures = []
        for item, image in zip(batch, out):
            fields = {
                "worker": self.name, "device": self.device.device, "dtype": self.device.dtype,
                "duration_s": round((gen_s + load_s) / len(batch), 4),
                "timings": {"load": round(load_s, 4), "generate": round(gen_s / len(batch), 4)},
            }
            info = infotext_for(chunk, item, image.size, self.device, self.name)
            futures.append(self.uploader.submit(job_id, item["index"], image, info, fields, progress.reported))
            self.items_done += 1
        return futures

    def _init_images(self, batch: list[dict[str, Any]]) -> list[Any]:
        return [Image.open(io.BytesIO(self.store.get(it["init_image"]))).convert("RGB") for it in batch]

    def _fail(self, job_id: str, indices: list[int], error: str, steps_reported: int = 0) -> None:
        for index in indices:
            if self.jobs.finish_item(job_id, index, "failed", {"error": error}, steps_reported):
                self.uploader.on_job_finished(job_id)

    def _cancel(self, job_id: str, indices: list[int], steps_reported: int = 0) -> None:
        for index in indices:
            if self.jobs.finish_item(job_id, index, "cancelled", {}, steps_reported):
                self.uploader.on_job_finished(job_id)
