"""Calling a loaded pipeline: one call, and a micro-batch with the out-of-memory fallbacks."""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from sdq import pipelines
from sdq.exceptions import Cancelled, OutOfMemory
from workers import options as worker_options
from workers.loading import transformer_files
from workers.loading.offload import free_memory, is_out_of_memory
from workers.loading.pipelines import Loaded, PipelineCache, denoiser, is_fatal_device_error
from workers.running import videocall
from workers.running.routing import next_try
from workers.running.warmstate import PipelineBroken, WarmState, restore_after_error

log = logging.getLogger(__name__)

StepCallback = Callable[[Any, int, Any, dict], dict]


def _step_hooks(pipe, task: str, callback: StepCallback | None,
                steppers: list[worker_options.StepFunction] = ()) -> dict[str, Any]:
    """Pipeline kwargs that call `callback` (then the options' per-step functions) after each step and stop
    the loop on cancel.

    The upscale pipeline only has the legacy `callback(step, t, latents)` hook, and depth2img does
    not check `pipe._interrupt`; so a cancel raises `Cancelled` out of the loop for all of them.
    """
    if callback is None and not steppers:
        return {}
    pipe._interrupt = False

    def on_step_end(p, i: int, t, kwargs: dict) -> dict:
        out = callback(p, i, t, kwargs) if callback is not None else kwargs
        if getattr(p, "_interrupt", False):
            raise Cancelled
        for step in steppers:
            step(i, kwargs)
        return out

    if pipelines.spec(task).legacy_callback:
        return {"callback": lambda i, t, latents: on_step_end(pipe, i, t, {}), "callback_steps": 1}
    return {"callback_on_step_end": on_step_end}


def _fit(images: list[Any], width: int, height: int) -> list[Any]:
    """Init images resized to `width` x `height` (the job's size) where they differ."""
    from PIL import Image

    return [im if im.size == (width, height) else im.resize((width, height), Image.Resampling.LANCZOS)
            for im in images]


DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
"""torch dtype -> the short name items and infotext use."""


def _dtype_label(pipe) -> str:
    """The dtype the denoiser of `pipe` computes in, as items and infotext name it."""
    net = denoiser(pipe)
    dtype = net.dtype
    return transformer_files.dtype_label(DTYPE_NAMES.get(dtype, str(dtype)), net)


@dataclass
class Call:
    """What one pipeline call made: images (empty when cancelled), the safety checker's verdict per
    image (None: no checker ran) and the dtype the UNet held during the call."""

    images: list[Any]
    nsfw: list[bool | None]
    dtype: str


@dataclass(frozen=True)
class Batch:
    """Whose images a micro-batch makes: the job and each prompt's item index (for per-step option hooks)."""

    job: str
    rows: list[int]


def run(pipe, loaded: Loaded, task: str, params: dict[str, Any], prompts: list[str],
        negative_prompts: list[str], seeds: list[int], images: dict[str, list[Any]] | None,
        callback: StepCallback | None, batch: Batch | None = None) -> Call:
    """One pipeline call for a batch; one seeded CPU generator per image. Its images are empty
    when the job was cancelled mid-call (`callback` set `pipe._interrupt`).

    No negative prompt at all is passed as None, not as empty strings: SDXL then uses zero embeddings
    for the unconditional half (`force_zeros_for_empty_prompt`), as diffusers' own default call does.

    `images` holds each image input's uploads (by request field, one per prompt), resized to `width` x
    `height` first; the spec says which keyword each is passed as and which parameters go along.

    A call that raises leaves the warm pipeline as it found it (`workers.running.warmstate`), or raises
    `PipelineBroken` when that fails.
    """
    scheduler = loaded.scheduler(params["scheduler"])  # the same object each call, reset (`workers.loading.schedulers`)
    if pipe.scheduler is not scheduler:  # setting it rewrites the pipeline's config
        pipe.scheduler = scheduler
    steppers = worker_options.steppers(worker_options.StepContext(
        batch.job, batch.rows, pipe, params, pipelines.spec(task).first_loop(params))) if batch is not None else []
    negative = {"negative_prompt": negative_prompts} if any(negative_prompts) else {}  # none: left out (Flux.2 has none)
    kwargs: dict[str, Any] = dict(
        prompt=prompts, **negative, num_inference_steps=params["steps"],
        guidance_scale=params["guidance_scale"],
        generator=[torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds],
        **_step_hooks(pipe, task, callback, steppers),
    )
    spec = pipelines.spec(task)
    kwargs.update(spec.call_kwargs(params))
    kwargs.update(pipelines.family_kwargs(loaded.family, params))
    kwargs.update(pipelines.class_kwargs(type(pipe).__name__, params))
    for image in spec.images:
        kwargs[image.kwarg] = _fit((images or {}).get(image.field, []), params["width"], params["height"])
    kwargs.update(worker_options.call_kwargs(spec, params, images, _fit))
    if spec.video:
        kwargs = videocall.call_kwargs(pipe, kwargs)
    state = WarmState.of(pipe)  # what the call may change on the warm pipeline, put back if it raises
    dtype = state.known("dtype", functools.partial(_dtype_label, pipe))  # as the pipeline is at the call
    try:
        with torch.inference_mode():
            out = pipe(**kwargs)
    except Cancelled:
        restore_after_error(state, pipe, loaded.model_id, Cancelled())
        return Call([], [], dtype)
    except Exception as exc:
        if not is_fatal_device_error(exc):  # after a sticky device error the process exits anyway
            restore_after_error(state, pipe, loaded.model_id, exc)
        raise
    if spec.video:  # one clip per prompt (`workers.running.video.Clip`), no safety checker
        made = videocall.clips(out, loaded.family, params)
        return Call(list(made), [None] * len(made), dtype)
    nsfw = getattr(out, "nsfw_content_detected", None)
    return Call(list(out.images), [bool(x) for x in nsfw] if nsfw is not None else [None] * len(out.images), dtype)


@dataclass
class Generated:
    """A micro-batch made, and how: the `Call` results joined, plus the images per call and the
    out-of-memory fallbacks it needed (the item fields `batch`, `oom_retries`, `low_memory`, `oom_error`)."""

    images: list[Any]
    nsfw: list[bool | None]
    dtype: str
    per_call: int
    low_memory: bool = False
    oom_retries: int = 0
    oom_error: str | None = None

    def oom_fields(self) -> dict[str, Any]:
        """The out-of-memory item fields, only when a fallback was in play."""
        out: dict[str, Any] = {"low_memory": True} if self.low_memory else {}
        if self.oom_retries:
            out.update(oom_retries=self.oom_retries, oom_error=self.oom_error)
        return out


CallCheck = Callable[[int, bool], None]
"""Called as `check(n_images, low_memory)` before each pipeline call (testing aids raise from it)."""


def generate(cache: PipelineCache, pipe, loaded: Loaded, task: str, params: dict[str, Any], prompts: list[str],
             negative_prompts: list[str], seeds: list[int], images: dict[str, list[Any]] | None,
             callback: StepCallback | None, check: CallCheck | None = None, batch: Batch | None = None) -> Generated:
    """Make a micro-batch, falling back on out of memory: first one image per call (the same seeds,
    so the same images), then low-memory mode (other models evicted, VAE slicing/tiling, model
    offload on CUDA), one image per call. Each retry starts after the failed call's exception is
    gone and memory freed. Low-memory mode that did not make it fit is left again. Raises
    `OutOfMemory` when nothing fits."""
    n = len(prompts)
    per_call = min(n, cache.images_per_call(task) or n)
    if images and type(pipe).__name__ in pipelines.REFERENCE_CLASSES:  # each prompt with its own reference image
        per_call = 1
    retries, error, entered = 0, None, False
    while True:
        if loaded.low_memory:
            cache.apply_low_memory(pipe, loaded)
        # 1. One attempt. The handler only records the error: retrying inside it would keep the
        #    exception, its traceback and so the failed call's tensors alive.
        try:
            return _calls(cache, pipe, loaded, task, params, prompts, negative_prompts, seeds, images, callback,
                          check, per_call, retries, error, batch)
        except Exception as exc:  # noqa: BLE001 - only out of memory is retried, on a pipeline put back
            if not is_out_of_memory(exc) or isinstance(exc, PipelineBroken):
                raise
            error = f"{type(exc).__name__}: {exc}"
        # 2. Outside the handler: the failed call is unreachable now; free it, then pick the next step.
        free_memory(cache.device)
        retries += 1
        step = next_try(per_call, loaded.low_memory)
        if step is None:
            tried_low = loaded.low_memory
            if entered:
                cache.leave_low_memory(pipe, loaded)
            raise OutOfMemory(error, {"oom_retries": retries, "low_memory": tried_low or None, "oom_error": error})
        if step.per_call < per_call:
            log.warning("model %s: out of memory with %d images per call (%s); retrying one per call",
                        loaded.model_id, per_call, error)
            per_call = step.per_call
        elif step.low_memory and not loaded.low_memory:
            log.warning("model %s: out of memory with one image per call (%s); retrying in low-memory mode",
                        loaded.model_id, error)
            cache.enter_low_memory(pipe, loaded)
            entered = True


def _calls(cache: PipelineCache, pipe, loaded: Loaded, task: str, params: dict[str, Any], prompts: list[str], negative_prompts: list[str],
           seeds: list[int], images: dict[str, list[Any]] | None, callback: StepCallback | None,
           check: CallCheck | None,
           per_call: int, retries: int, error: str | None, batch: Batch | None = None) -> Generated:
    """The micro-batch in calls of `per_call` images."""
    out = Generated([], [], "", per_call, loaded.low_memory, retries, error)
    for start in range(0, len(prompts), per_call):
        part = slice(start, start + per_call)
        if check is not None:
            check(len(prompts[part]), loaded.low_memory)
        part_images = {k: v[part] for k, v in images.items()} if images else None
        rows = Batch(batch.job, batch.rows[part]) if batch is not None else None
        call = run(pipe, loaded, task, params, prompts[part], negative_prompts[part], seeds[part], part_images, callback,
                   rows)
        call = worker_options.after_call(worker_options.CallContext(  # further passes, e.g. the hires fix's
            cache, loaded, task, params, prompts[part], negative_prompts[part], seeds[part], part_images, callback,
            functools.partial(run, batch=rows)), call)
        out.dtype = call.dtype
        if not call.images:  # cancelled
            return Generated([], [], call.dtype, per_call, loaded.low_memory, retries, error)
        out.images += call.images
        out.nsfw += call.nsfw
    return out
