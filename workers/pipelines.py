"""Loading diffusers pipelines once and calling them: the only place that runs models."""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from sdq.exceptions import ModelError
from sdq.models import model_kind
from workers import builtin
from workers.device import Device

log = logging.getLogger(__name__)

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


@dataclass
class Loaded:
    """One model held in memory: its base pipeline and derived task pipelines."""

    model_id: str
    base: Any
    scheduler_config: dict[str, Any]
    tasks: dict[str, Any] = field(default_factory=dict)


class PipelineCache:
    """Keeps up to `size` models loaded on one device; loads each once, reuses it."""

    def __init__(self, models_dir: Path, device: Device, size: int = 2, allow_ckpt: bool = False,
                 low_memory: bool = False) -> None:
        self.models_dir = Path(models_dir)
        self.device = device
        self.size = size
        self.allow_ckpt = allow_ckpt
        self.low_memory = low_memory
        self._models: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()

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
                while len(self._models) > self.size:
                    old_id, _ = self._models.popitem(last=False)
                    log.info("evicted model %s", old_id)
                    if self.device.kind == "gpu":
                        torch.cuda.empty_cache()
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
            elif kind == "folder":
                pipe = diffusers.DiffusionPipeline.from_pretrained(Path(model_id).expanduser(), dtype=dtype)
            elif kind == "file":
                pipe = self._load_single_file(model_id, dtype)
            else:
                pipe = diffusers.DiffusionPipeline.from_pretrained(
                    model_id, dtype=dtype, cache_dir=str(self.models_dir / "hub"))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"cannot load model {model_id!r}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        self._place(pipe)
        return Loaded(model_id, pipe, dict(pipe.scheduler.config))

    def _load_single_file(self, path: str, dtype: torch.dtype):
        import diffusers

        if path.lower().endswith(".ckpt") and not self.allow_ckpt:
            raise ModelError(f"{path}: .ckpt files are pickles and may run code; the operator must set "
                             "SDQ_ALLOW_CKPT=1 to load them (prefer .safetensors)")
        return diffusers.StableDiffusionPipeline.from_single_file(path, dtype=dtype)

    def _place(self, pipe) -> None:
        if self.low_memory and self.device.kind == "gpu":
            pipe.vae.enable_slicing()
            pipe.vae.enable_tiling()
            pipe.enable_model_cpu_offload(device=self.device.device)
        else:
            pipe.to(self.device.device)

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


StepCallback = Callable[[Any, int, Any, dict], dict]


def run(pipe, loaded: Loaded, task: str, params: dict[str, Any], prompts: list[str],
        negative_prompts: list[str], seeds: list[int], images: list[Any] | None,
        callback: StepCallback | None) -> list[Any]:
    """One pipeline call for a batch; one seeded CPU generator per image. Returns PIL images."""
    pipe.scheduler = make_scheduler(params["scheduler"], loaded.scheduler_config)
    kwargs: dict[str, Any] = dict(
        prompt=prompts, negative_prompt=negative_prompts, num_inference_steps=params["steps"],
        guidance_scale=params["guidance_scale"],
        generator=[torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds],
        callback_on_step_end=callback,
    )
    if task == "txt2img":
        kwargs.update(height=params["height"], width=params["width"])
    elif task in ("img2img", "depth2img"):
        kwargs.update(image=images, strength=params["strength"])
    elif task == "upscale":
        kwargs.update(image=images, noise_level=params["noise_level"])
    with torch.inference_mode():
        return pipe(**kwargs).images


def loop_steps(task: str, params: dict[str, Any]) -> int:
    """How many denoising steps the pipeline will actually run."""
    if task in ("img2img", "depth2img"):
        return max(1, int(params["steps"] * params["strength"]))
    return params["steps"]
