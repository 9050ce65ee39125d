"""Loading diffusers pipelines once and calling them: the only place that runs models."""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdq import contract, defaults, families, options, pipelines
from sdq.exceptions import ModelError, ModelUnavailable, OutOfMemory
from sdq.sources import single_file_config, source_for
from workers.loading import checkpoints
from workers.loading import offload as offloading
from workers.loading.offload import free_memory, is_out_of_memory
from workers.loading import transformer_files
from workers.loading.sources import WorkerFetcher
from workers import options as worker_options
from workers.loading.cpu_paths import apply_cpu_path
from workers.loading.device import Device
from workers.loading.loadwatch import progress_while
from workers.loading.schedulers import Reusable

log = logging.getLogger(__name__)

STICKY_DEVICE_ERRORS = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS_",
                        "CUDNN_STATUS_", "unspecified launch failure")
"""Words of CUDA errors after which the process's CUDA context is unusable: every later call fails."""


def is_fatal_device_error(exc: BaseException) -> bool:
    """A sticky device error (illegal address, device-side assert...): the CUDA context is broken, so
    the process must exit and be restarted; out-of-memory errors are not sticky."""
    if is_out_of_memory(exc):
        return False
    return isinstance(exc, torch.AcceleratorError) or (
        isinstance(exc, RuntimeError) and any(word in str(exc) for word in STICKY_DEVICE_ERRORS))


def make_scheduler(name: str, config: dict[str, Any]):
    """A fresh scheduler of the named kind, from the model's saved scheduler config."""
    import diffusers

    return getattr(diffusers, pipelines.SCHEDULERS[name].diffusers_class).from_config(config)


def warm_imports() -> None:
    """Import the pipeline classes now, so a worker's first item does not pay seconds of lazy imports."""
    import diffusers

    for name in sorted(options.pipeline_classes() | {s.diffusers_class for s in pipelines.SCHEDULERS.values()}):
        getattr(diffusers, name)


@dataclass
class Loaded:
    """One model held in memory: its base pipeline and derived task pipelines."""

    model_id: str
    base: Any
    scheduler_config: dict[str, Any]
    tasks: dict[str, Any] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    family: str = pipelines.SD  # which class of each pipeline spec runs it
    low_memory: bool = False  # VAE slicing and tiling (and model offload on CUDA): see `low_memory_pixels`
    low_memory_pixels: int | None = None  # on for images of at least this many pixels (None: for good, or off)
    pixels: int = 0  # the image size of the chunk it runs now (0: unknown)
    offload: str | None = None  # the offload mode routing chose (`sdq.memory.fit`): `model`, `group`, None
    offloaded: Any = None  # the pipeline whose model-offload hooks the shared modules carry
    parts: dict[str, Any] = field(default_factory=dict)  # request option -> what its worker hook holds loaded
    digest: str | None = None  # weights digest of the files it was built from (the result cache's key)
    quantization: str | None = None  # how a quantizer stored the denoiser's weights (`gguf Q8_0`), else None

    def check_scheduler(self, name: str) -> None:
        """ModelError for a scheduler the model's family cannot run (a flow-matching one on a
        noise-prediction model, or the reverse): the producer checks it when it knows the family at
        submit, not for hub ids or pushed models."""
        fam = families.family(self.family)
        if not fam.runs(name):
            able = ", ".join(s for s in pipelines.SCHEDULERS if fam.runs(s))
            raise ModelError(f"scheduler {name!r} does not run {fam.title} models like {self.model_id!r}; "
                             f"use {able}")

    def scheduler(self, name: str):
        """The scheduler for one call, in its as-built state: one instance per name (`from_config` costs
        ~1 ms of signature inspection), reset rather than copied (`workers.loading.schedulers`)."""
        self.check_scheduler(name)
        if name not in self.schedulers:
            self.schedulers[name] = Reusable(make_scheduler(name, self.scheduler_config))
        return self.schedulers[name].fresh()

    def pipelines(self) -> list[Any]:
        """The base and every derived pipeline, each once."""
        return list({id(p): p for p in (self.base, *self.tasks.values()) if p is not None}.values())


class PipelineCache:
    """Keeps up to `size` models loaded on one device; loads each once, reuses it."""

    def __init__(self, models_dir: Path, device: Device, size: int = 2, allow_ckpt: bool = False,
                 low_memory: bool = False, safety_checker: bool = True,
                 upscale_batch: int = defaults.UPSCALE_MAX_BATCH, store=None,
                 warm_adapters: int = defaults.WARM_ADAPTERS) -> None:
        self.models_dir = Path(models_dir)
        self.store = store  # the bucket `store:NAME` models are pulled from
        self.device = device
        self.size = max(1, size)
        self.allow_ckpt = allow_ckpt
        self.low_memory = low_memory
        self.safety_checker = safety_checker
        self.upscale_batch = max(1, upscale_batch)
        self.warm_adapters = max(1, warm_adapters)
        self.fetcher = WorkerFetcher(self.models_dir, store, half=device.torch_dtype != torch.float32)
        self._models: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.RLock()
        self._placing: str | None = None  # the offload mode of the model being loaded (`get`)
        if low_memory and device.kind == "cpu":
            log.info("--low-memory has no effect on a CPU (it switches on VAE slicing/tiling and model CPU "
                     "offload, which only save GPU memory): running normally")

    def load(self, model_id: str) -> Loaded:
        """Load `model_id` now (for `--preload`), whatever pipelines it serves."""
        with self._lock:
            return self._entry(model_id)

    def _entry(self, model_id: str, offload: str | None = None) -> Loaded:
        entry = self._models.get(model_id)
        if entry is None:
            # The least recently used models go first, so that at the peak only `size` are resident.
            while len(self._models) >= self.size:
                self.evict(next(iter(self._models)))
            self._placing = offload  # how `_place` puts it on the device
            entry = self._models[model_id] = self._load_with_room(model_id)
        self._models.move_to_end(model_id)
        return entry

    def evict(self, model_id: str) -> None:
        """Drop a model and free its memory: remove its offload hooks (reference cycles), drop every
        reference the cache holds, collect, then empty the CUDA cache."""
        with self._lock:
            entry = self._models.pop(model_id, None)
            if entry is None:
                return
            [p.remove_all_hooks() for p in entry.pipelines()]  # offload hooks: a hooked module references itself
            entry.tasks.clear()
            entry.schedulers.clear()
            entry.parts.clear()
            entry.base = entry.offloaded = None
            del entry  # the last reference: only cycles are left, and the collection below breaks them
            free_memory(self.device)
            log.info("evicted model %s", model_id)

    def evict_others(self, model_id: str) -> None:
        """Evict every model but `model_id` (low-memory mode: the device is needed for this one)."""
        with self._lock:
            for other in [m for m in self._models if m != model_id]:
                self.evict(other)

    def entries(self) -> list[Loaded]:
        """The loaded models, least recently used first."""
        return list(self._models.values())

    def loaded(self) -> list[str]:
        """Model ids in memory now, most recently used last."""
        return list(self._models)

    def quantized(self) -> dict[str, str]:
        """Model id -> how its denoiser's weights are stored, for the loaded models a quantizer loaded
        (`{"builtin:tiny-flux-gguf": "gguf Q8_0"}`)."""
        return {m: e.quantization for m, e in list(self._models.items()) if e.quantization}

    def weights_digest(self, model_id: str) -> str | None:
        """The result cache's weights digest of `model_id`: recorded at its load while it is loaded
        (its files may have changed since), else what its files say now."""
        entry = self._models.get(model_id)
        return entry.digest if entry is not None else self.fetcher.hasher.digest(model_id)

    @property
    def lock(self) -> threading.RLock:
        """Held while models and what option hooks load into them change (`workers.options`)."""
        return self._lock

    def loaded_adapters(self) -> dict[str, list[str]]:
        """Model id -> the weights request options hold loaded in it now, e.g. LoRA adapters (models with
        none left out)."""
        return {m: ids for m, e in list(self._models.items()) if (ids := worker_options.warm(e))}

    def offloaded_models(self) -> dict[str, str]:
        """Model id -> the offload mode it runs in, for the loaded models that run offloaded."""
        return {m: e.offload for m, e in list(self._models.items()) if e.offload}

    def get(self, model_id: str, task: str, params: dict[str, Any] | None = None,
            offload: str | None = None) -> tuple[Any, Loaded]:
        """The pipeline for (`model_id`, `task`), as the variant an item of `params` runs (an option's
        `derive`, e.g. with a ControlNet), loading the model (and what the variant needs) on first use, in
        the memory mode the item needs: `offload` (`sdq.memory.fit`; an offloaded model runs alone), and
        low-memory mode only for images as large as one that ran out of memory without it."""
        with self._lock:
            if offload is not None:
                self.evict_others(model_id)
            entry = self._entry(model_id, offload)
            found = worker_options.derive(params)
            key = f"{task}+{found[1]}" if found else task
            if key not in entry.tasks:
                entry.tasks[key] = found[0].derive(self, entry, task, found[1]) if found else self._derive(entry, task)
            pipe = entry.tasks[key]
            offloading.use(pipe, entry, offload, self.device.device)
            if params and "width" in params and "height" in params:
                entry.pixels = (lambda w, h: w * h)(*contract.item_size(task, params))
                if entry.low_memory_pixels is not None and entry.low_memory != (entry.pixels >= entry.low_memory_pixels):
                    if entry.low_memory:
                        self.leave_low_memory(pipe, entry, f"{entry.pixels}-pixel images fit without it", forget=False)
                    else:
                        self.enter_low_memory(pipe, entry)
            return pipe, entry

    def low_memory_for(self, model_id: str, pixels: int) -> bool:
        """Whether an image of `pixels` pixels of `model_id` runs in low-memory mode now (the result
        cache's key says so: its VAE decodes in tiles)."""
        entry = self._models.get(model_id)
        if self.low_memory and self.device.kind == "gpu":
            return True
        if entry is None or entry.low_memory_pixels is None:
            return entry is not None and entry.low_memory  # on for good, or off
        return pixels >= entry.low_memory_pixels

    def images_per_call(self, task: str) -> int | None:
        """Most images one call of `task` may make (None: the whole micro-batch). The x4 upscaler's
        VAE decodes in fp32 at 4x the size: one image per call unless the operator allows more."""
        if pipelines.spec(task).video:  # a clip per call: its frames are the batch
            return 1
        return self.upscale_batch if pipelines.spec(task).limit_batch else None

    def _load_with_room(self, model_id: str) -> Loaded:
        """Load a model; out of memory while other models are loaded: evict them all, try once more.
        Raises ModelError (the runner fails the items with it) when it still does not fit."""
        try:
            return self._load(model_id)
        except OutOfMemory as exc:
            error = str(exc)
        if not self._models:
            raise ModelError(error)
        log.warning("%s; evicting %s and loading it again", error, list(self._models))
        self.evict_others(model_id)
        try:
            return self._load(model_id)
        except OutOfMemory as exc:
            error = str(exc)
        raise ModelError(f"{error} (with no other model loaded)")

    def _load(self, model_id: str) -> Loaded:
        """Load and place a model; any failure raises ModelError (or OutOfMemory; ModelUnavailable when
        its weights cannot be fetched now) with nothing left behind: the half-built pipeline is dropped
        and its memory freed before the error leaves."""
        log.info("loading model %s (%s) on %s/%s", model_id, source_for(model_id).kind, self.device.device,
                 self.device.dtype)
        try:
            with progress_while(getattr(self.store, "on_retry", None)):  # the worker's lease progress: not hung
                pipe = self._open(model_id)
                digest = self.fetcher.hasher.digest(model_id)  # of the files just read
                pipe.set_progress_bar_config(disable=True)
                if not self.safety_checker and getattr(pipe, "safety_checker", None) is not None:
                    pipe.safety_checker = None  # the operator turned it off (--no-safety-checker)
                entry = Loaded(model_id, pipe, dict(pipe.scheduler.config),
                               family=checkpoints.family_of(model_id, pipe), digest=digest,
                               quantization=transformer_files.quantization(
                                   getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)))
                self._place(entry)
            return entry
        except ModelUnavailable:  # weights not fetched now (nothing built): the runner gives the items back
            raise
        except ModelError as exc:
            error: Exception = ModelError(str(exc))
        except Exception as exc:  # noqa: BLE001 - whatever a broken checkpoint raises
            error = (OutOfMemory(f"out of memory loading model {model_id!r}: {type(exc).__name__}: {exc}")
                     if is_out_of_memory(exc) else
                     ModelError(f"cannot load model {model_id!r}: {type(exc).__name__}: {exc}"))
            log.warning("loading model %s failed", model_id, exc_info=True)
        pipe = entry = None  # noqa: F841 - the half-built pipeline goes before the error is raised
        free_memory(self.device)
        raise error

    def _open(self, model_id: str):
        """The model's pipeline from the local path its source opens (fetched or built first)."""
        path = source_for(model_id).open(self.fetcher)
        dtype, split = self.device.torch_dtype, transformer_files.transformer_file(path)  # a transformer file
        if split is not None:
            return transformer_files.load(*split, dtype)
        return self._load_single_file(str(path), dtype) if path.is_file() else self._from_folder(path, dtype)

    def _from_folder(self, folder: Path, dtype: torch.dtype):
        """A diffusers folder: the fp16 weight variant when it helps, and components whose class
        transformers renamed loaded with the new class."""
        import diffusers

        if not (folder / "model_index.json").is_file():
            raise ModelError(f"{folder}: not a diffusers model folder (no model_index.json)")
        variant = checkpoints.choose_variant(folder, half=dtype != torch.float32)
        folder = checkpoints.with_current_classes(folder, self.models_dir / "views")
        # DiffusionPipeline reads the class from model_index.json (the AutoPipeline row of its family).
        return diffusers.DiffusionPipeline.from_pretrained(folder, dtype=dtype, variant=variant,
                                                           **checkpoints.absent_components(folder))

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
            # The family from the file's tensor names picks the class; diffusers infers the rest of the
            # architecture from the keys and fetches that model's configs from the hub (or the local hub
            # cache; HF_HUB_OFFLINE is respected).
            try:
                name = pipelines.base_class(families.detect(file))
            except families.UnknownFamily as exc:
                raise ModelError(f"single-file model {path!r}: {exc}") from None
            log.warning("no local config beside %s: diffusers will look the configs of a %s up on the hub",
                        file, name)
            return getattr(diffusers, name).from_single_file(str(file), dtype=dtype,
                                                             cache_dir=str(self.models_dir / "hub"))
        cls = getattr(diffusers, checkpoints.pipeline_class_name(config))
        return cls.from_single_file(str(file), config=str(config), dtype=dtype, local_files_only=True)

    def _place(self, entry: Loaded) -> None:
        if self._placing is not None:  # never whole on the device: it does not fit there
            offloading.enable(entry.base, entry, self._placing, self.device.device)
        elif self.low_memory and self.device.kind == "gpu":
            entry.low_memory = True
            self.apply_low_memory(entry.base, entry)
        else:
            entry.base.to(self.device.device)
        if self.device.cpu_path is not None:  # a CPU worker's backend (`workers.loading.cpu_paths`)
            apply_cpu_path(entry.base, self.device.backend)

    def apply_low_memory(self, pipe, entry: Loaded) -> None:
        """Low-memory mode for the pipeline about to run (`workers.loading.offload.low_memory_on`)."""
        offloading.low_memory_on(pipe, entry, self.device.device, self.device.kind == "gpu")

    def enter_low_memory(self, pipe, entry: Loaded) -> None:
        """The out-of-memory fallback for a model: evict every other cached model, then low-memory mode."""
        log.warning("model %s: entering low-memory mode (evicting %s)", entry.model_id,
                    [m for m in self._models if m != entry.model_id] or "no other model")
        self.evict_others(entry.model_id)
        entry.low_memory = True
        entry.low_memory_pixels = min(entry.low_memory_pixels or entry.pixels, entry.pixels) or None
        self.apply_low_memory(pipe, entry)
        free_memory(self.device)

    def leave_low_memory(self, pipe, entry: Loaded, why: str = "it did not help", forget: bool = True) -> None:
        """Back to normal mode: low-memory mode did not make the call fit (so it only costs speed: `forget`
        the size that needed it), or the images now are smaller than every one that needed it."""
        log.warning("model %s: leaving low-memory mode (%s)", entry.model_id, why)
        entry.low_memory = False
        if forget:
            entry.low_memory_pixels = None
        offloading.low_memory_off(pipe, entry, self.device.device)
        free_memory(self.device)

    def _derive(self, entry: Loaded, task: str):
        """The task's pipeline over the base's modules, in the worker's dtype (`from_pipe` without a
        dtype casts the shared modules to fp32 in place)."""
        import diffusers

        name = pipelines.spec(task).class_for(entry.family)
        if name is None:
            raise ModelError(f"model {entry.model_id!r} ({entry.family} family) cannot run pipeline {task!r}")
        cls = getattr(diffusers, name)
        if isinstance(entry.base, cls):
            return entry.base
        if entry.family == families.WAN:  # Wan's text- and image-to-video models are different transformers
            raise ModelError(f"model {entry.model_id!r} is a {type(entry.base).__name__} model: it cannot run "
                             f"pipeline {task!r} (a Wan model runs one of txt2video and img2video)")
        try:
            pipe = cls.from_pipe(entry.base, dtype=self.device.torch_dtype)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"model {entry.model_id!r} cannot run pipeline {task!r}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        return pipe


def denoiser(pipe):
    """The pipeline's denoising network: the UNet, or the transformer of transformer families."""
    return getattr(pipe, "unet", None) or pipe.transformer
