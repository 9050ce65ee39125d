"""Loading diffusers pipelines once and calling them: the only place that runs models."""
from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from sdq.exceptions import ModelError
from sdq.models import STORE_PREFIX, model_kind
from workers import builtin
from workers.device import Device

log = logging.getLogger(__name__)

OUT_OF_MEMORY: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError, MemoryError)
"""Errors that mean "the device ran out of memory" (CUDA allocator, or host RAM on a CPU)."""

SCHEDULERS = {
    "pndm": "PNDMScheduler", "plms": "PNDMScheduler", "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler", "lms": "LMSDiscreteScheduler",
    "ddpm": "DDPMScheduler", "heun": "HeunDiscreteScheduler", "unipc": "UniPCMultistepScheduler",
}
"""Scheduler name -> diffusers class, built with `from_config` of the model's own config."""

TASK_CLASSES = {
    "txt2img": "StableDiffusionPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "upscale": "StableDiffusionUpscalePipeline",
    "depth2img": "StableDiffusionDepth2ImgPipeline",
}
"""Pipeline name -> diffusers pipeline class."""


def make_scheduler(name: str, config: dict[str, Any]):
    """A fresh scheduler of the named kind, from the model's saved scheduler config."""
    import diffusers

    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


def warm_imports() -> None:
    """Import the pipeline classes now, so a worker's first item does not pay seconds of lazy imports."""
    import diffusers

    for name in (*TASK_CLASSES.values(), *set(SCHEDULERS.values())):
        getattr(diffusers, name)


@dataclass
class Loaded:
    """One model held in memory: its base pipeline and derived task pipelines."""

    model_id: str
    base: Any
    scheduler_config: dict[str, Any]
    tasks: dict[str, Any] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    low_memory: bool = False  # switched on for good after an out-of-memory error (shared modules)

    def scheduler(self, name: str):
        """A fresh scheduler for one call: a deep copy of a template built once per name
        (`from_config` costs ~1 ms of signature inspection; a copy ~0.3 ms)."""
        if name not in self.schedulers:
            self.schedulers[name] = make_scheduler(name, self.scheduler_config)
        return copy.deepcopy(self.schedulers[name])


class PipelineCache:
    """Keeps up to `size` models loaded on one device; loads each once, reuses it."""

    def __init__(self, models_dir: Path, device: Device, size: int = 2, allow_ckpt: bool = False,
                 low_memory: bool = False, store=None) -> None:
        self.models_dir = Path(models_dir)
        self.store = store  # the bucket `store:NAME` models are pulled from
        self.device = device
        self.size = size
        self.allow_ckpt = allow_ckpt
        self.low_memory = low_memory
        self._models: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        if low_memory and device.kind == "cpu":
            log.info("--low-memory has no effect on a CPU (it switches on VAE slicing/tiling and model CPU "
                     "offload, which only save GPU memory): running normally")

    def load(self, model_id: str) -> Loaded:
        """Load `model_id` now (for `--preload`), whatever pipelines it serves."""
        with self._lock:
            entry = self._models.get(model_id)
            if entry is None:
                entry = self._models[model_id] = self._load(model_id)
                self._evict()
            return entry

    def _evict(self) -> None:
        while len(self._models) > self.size:
            old_id, _ = self._models.popitem(last=False)
            log.info("evicted model %s", old_id)
            if self.device.kind == "gpu":
                torch.cuda.empty_cache()

    def loaded(self) -> list[str]:
        """Model ids in memory now, most recently used last."""
        return list(self._models)

    def get(self, model_id: str, task: str) -> tuple[Any, Loaded]:
        """The pipeline for (`model_id`, `task`), loading the model on first use."""
        with self._lock:
            entry = self._models.get(model_id)
            if entry is None:
                entry = self._load(model_id)
                self._models[model_id] = entry
                self._evict()
            self._models.move_to_end(model_id)
            if task not in entry.tasks:
                entry.tasks[task] = self._derive(entry, task)
            return entry.tasks[task], entry

    def _load(self, model_id: str) -> Loaded:
        import diffusers

        kind = model_kind(model_id)
        dtype = self.device.torch_dtype
        log.info("loading model %s (%s) on %s/%s", model_id, kind, self.device.device, self.device.dtype)
        try:
            if kind == "builtin":
                path = builtin.ensure_builtin(self.models_dir, model_id.removeprefix(builtin.BUILTIN_PREFIX))
                pipe = diffusers.DiffusionPipeline.from_pretrained(path, dtype=dtype)
            elif kind == "store":
                pipe = self._load_from_store(model_id.removeprefix(STORE_PREFIX), dtype)
            elif kind == "folder":
                pipe = diffusers.DiffusionPipeline.from_pretrained(Path(model_id).expanduser(), dtype=dtype)
            elif kind == "file":
                pipe = self._load_single_file(model_id, dtype)
            else:
                pipe = self._load_hub(model_id, dtype)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"cannot load model {model_id!r}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        self._place(pipe)
        return Loaded(model_id, pipe, dict(pipe.scheduler.config))

    def _load_hub(self, repo_id: str, dtype: torch.dtype):
        """A Hugging Face repo id: from the local cache when it is there (no network), else from the
        hub unless HF_HUB_OFFLINE is set."""
        import diffusers
        from huggingface_hub import constants

        cache = str(self.models_dir / "hub")
        try:
            return diffusers.DiffusionPipeline.from_pretrained(repo_id, dtype=dtype, cache_dir=cache,
                                                               local_files_only=True)
        except (OSError, ValueError) as exc:
            if constants.HF_HUB_OFFLINE:
                raise ModelError(f"model {repo_id!r} is not in the local cache {cache} and HF_HUB_OFFLINE is "
                                 f"set, so it cannot be downloaded ({type(exc).__name__}: {exc})") from exc
        log.info("model %s is not cached in %s: downloading it from the hub", repo_id, cache)
        return diffusers.DiffusionPipeline.from_pretrained(repo_id, dtype=dtype, cache_dir=cache)

    def _load_from_store(self, name: str, dtype: torch.dtype):
        """A model pushed to the bucket: pulled into the local cache once (verified), then loaded."""
        import diffusers

        from storage.models import pull

        if self.store is None:
            raise ModelError(f"store:{name}: this worker has no bucket to pull models from")
        path = pull(self.store, name, self.models_dir)
        if path.is_file():
            return self._load_single_file(str(path), dtype)
        return diffusers.DiffusionPipeline.from_pretrained(path, dtype=dtype)

    def _load_single_file(self, path: str, dtype: torch.dtype):
        """A single checkpoint in the original (LDM) layout, with its architecture from a local config
        (see `single_file_config`); `.ckpt` (a pickle) only when the operator allows it."""
        import diffusers

        if path.lower().endswith(".ckpt") and not self.allow_ckpt:
            raise ModelError(f"{path}: .ckpt files are pickles and may run code; the operator must set "
                             "SDQ_ALLOW_CKPT=1 to load them (prefer .safetensors)")
        file = Path(path).expanduser()
        if not file.is_file():
            raise ModelError(f"single-file model {path!r}: no such file on worker")
        config = single_file_config(file)
        if config is None:
            # diffusers infers the architecture from the keys and fetches that model's configs from the
            # hub (or the local hub cache; HF_HUB_OFFLINE is respected).
            log.warning("no local config beside %s: diffusers will look its configs up on the hub", file)
            return diffusers.StableDiffusionPipeline.from_single_file(
                str(file), dtype=dtype, cache_dir=str(self.models_dir / "hub"))
        cls = getattr(diffusers, _pipeline_class_name(config))
        return cls.from_single_file(str(file), config=str(config), dtype=dtype, local_files_only=True)

    def _place(self, pipe) -> None:
        if self.low_memory and self.device.kind == "gpu":
            pipe.vae.enable_slicing()
            pipe.vae.enable_tiling()
            pipe.enable_model_cpu_offload(device=self.device.device)
        else:
            pipe.to(self.device.device)

    def enable_low_memory(self, pipe, entry: Loaded) -> None:
        """Switch `pipe` (and the model `entry` whose modules it shares) to low-memory mode for
        good, the out-of-memory fallback: VAE slicing and tiling, attention slicing and, on CUDA,
        model CPU offload. Slower, but a smaller peak."""
        entry.low_memory = True
        pipe.vae.enable_slicing()
        pipe.vae.enable_tiling()
        pipe.enable_attention_slicing()
        if self.device.kind == "gpu":  # not exercised by the tests: no GPU on the test machine
            torch.cuda.empty_cache()
            pipe.enable_model_cpu_offload(device=self.device.device)

    def _derive(self, entry: Loaded, task: str):
        import diffusers

        cls = getattr(diffusers, TASK_CLASSES[task])
        if isinstance(entry.base, cls):
            return entry.base
        try:
            pipe = cls.from_pipe(entry.base)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"model {entry.model_id!r} cannot run pipeline {task!r}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        return pipe


def single_file_config(file: Path) -> Path | None:
    """The local diffusers config folder of a single checkpoint file: a folder beside it named like
    the file without its suffix (`sd-v1-4.safetensors` -> `sd-v1-4/`) holding `model_index.json` and
    each component's config (weights are not needed). None when there is none."""
    folder = file.with_suffix("")
    return folder if (folder / "model_index.json").is_file() else None


def _pipeline_class_name(config: Path) -> str:
    import json

    name = json.loads((config / "model_index.json").read_text(encoding="utf-8")).get("_class_name", "")
    return name if name in TASK_CLASSES.values() else "StableDiffusionPipeline"


StepCallback = Callable[[Any, int, Any, dict], dict]


class _Interrupted(Exception):
    """Raised from a step callback once the job is cancelled: stops any pipeline at once."""


def _step_hooks(pipe, task: str, callback: StepCallback | None) -> dict[str, Any]:
    """Pipeline kwargs that call `callback` after each step and stop the loop on cancel.

    The upscale pipeline only has the legacy `callback(step, t, latents)` hook, and depth2img does
    not check `pipe._interrupt`; so a cancel raises `_Interrupted` out of the loop for all of them.
    """
    if callback is None:
        return {}
    pipe._interrupt = False

    def on_step_end(p, i: int, t, kwargs: dict) -> dict:
        out = callback(p, i, t, kwargs)
        if getattr(p, "_interrupt", False):
            raise _Interrupted
        return out

    if task == "upscale":
        return {"callback": lambda i, t, latents: on_step_end(pipe, i, t, {}), "callback_steps": 1}
    return {"callback_on_step_end": on_step_end}


def _fit(images: list[Any], width: int, height: int) -> list[Any]:
    """Init images resized to `width` x `height` (the job's size) where they differ."""
    from PIL import Image

    return [im if im.size == (width, height) else im.resize((width, height), Image.Resampling.LANCZOS)
            for im in images]


def run(pipe, loaded: Loaded, task: str, params: dict[str, Any], prompts: list[str],
        negative_prompts: list[str], seeds: list[int], images: list[Any] | None,
        callback: StepCallback | None) -> list[Any]:
    """One pipeline call for a batch; one seeded CPU generator per image. Returns PIL images, or
    an empty list when the job was cancelled mid-call (`callback` set `pipe._interrupt`).

    Image pipelines get their init images resized to `width` x `height` first; upscale makes 4x that.
    """
    pipe.scheduler = loaded.scheduler(params["scheduler"])
    kwargs: dict[str, Any] = dict(
        prompt=prompts, negative_prompt=negative_prompts, num_inference_steps=params["steps"],
        guidance_scale=params["guidance_scale"],
        generator=[torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds],
        **_step_hooks(pipe, task, callback),
    )
    if task == "txt2img":
        kwargs.update(height=params["height"], width=params["width"])
    else:
        kwargs["image"] = _fit(images or [], params["width"], params["height"])
        if task == "upscale":
            kwargs["noise_level"] = params["noise_level"]
        else:
            kwargs["strength"] = params["strength"]
    try:
        with torch.inference_mode():
            return pipe(**kwargs).images
    except _Interrupted:
        return []


def loop_steps(task: str, params: dict[str, Any]) -> int:
    """How many denoising steps the pipeline will actually run."""
    if task in ("img2img", "depth2img"):
        return max(1, int(params["steps"] * params["strength"]))
    return params["steps"]
