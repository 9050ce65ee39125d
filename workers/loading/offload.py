"""Running a model offloaded: its weights in host RAM, moved to the device a component (diffusers' model
CPU offload) or a block group (group offload) at a time, when the device cannot hold the whole model
(`sdq.memory.fit`). Switched per chunk: on when the item needs it, off again when the whole model fits."""
from __future__ import annotations

import gc
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

OUT_OF_MEMORY: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError, MemoryError)
"""Errors that mean "the device ran out of memory" (CUDA allocator, or host RAM on a CPU)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """The device (or host) ran out of memory: worth a retry with less memory."""
    return isinstance(exc, OUT_OF_MEMORY) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def free_memory(device: Any) -> None:
    """Collect garbage (offload hooks and tracebacks form reference cycles), then give the CUDA
    caching allocator's free blocks back, so the next allocation finds them (`device`: a `Device`)."""
    gc.collect()
    if device.kind == "gpu":
        torch.cuda.empty_cache()


GROUP_BLOCKS = 1
"""Blocks per group under group offload: the least device memory (one block of each component)."""


def _modules(pipe: Any) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def _grouped(module: torch.nn.Module) -> bool:
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return _is_group_offload_enabled(module)


def _group(module: torch.nn.Module, device: str) -> None:
    """Group offload on one module: its blocks onloaded to `device` one group at a time, from the CPU."""
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(module, onload_device=torch.device(device), offload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=GROUP_BLOCKS)


def _ungroup(module: torch.nn.Module) -> None:
    """Remove group offload's hooks from `module` (its weights are left on the CPU)."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks import group_offloading as g

    registry = HookRegistry.check_if_exists_or_initialize(module)
    for name in (g._GROUP_OFFLOADING, g._LAYER_EXECUTION_TRACKER, g._LAZY_PREFETCH_GROUP_OFFLOADING):
        registry.remove_hook(name, recurse=True)


def enable(pipe: Any, entry: Any, mode: str, device: str) -> None:
    """Make `pipe` (one of `entry`'s pipelines) run offloaded in `mode` (`model` or `group`) on `device`.
    Model offload's hooks live on the pipeline that made them, so they move to `pipe` when another of the
    model's pipelines carried them; group offload's live on the (shared) modules, so only modules new to
    `pipe` (a ControlNet) get them."""
    if entry.offload not in (None, mode):
        disable(entry, None)
    if mode == "model":
        if entry.offloaded is not pipe:
            if entry.offloaded is not None:
                entry.offloaded.remove_all_hooks()
            pipe.enable_model_cpu_offload(device=device)
            entry.offloaded = pipe
    elif mode == "group":
        if entry.offloaded is not None:  # low-memory mode's model offload: group hooks cannot go beside it
            entry.offloaded.remove_all_hooks()
            entry.offloaded = None
        for module in _modules(pipe).values():
            if not _grouped(module):
                module.to("cpu")
                _group(module, device)
    else:
        raise ValueError(f"unknown offload mode {mode!r}")
    if entry.offload != mode:
        log.info("model %s runs offloaded (%s offload) on %s", entry.model_id, mode, device)
    entry.offload = mode


def disable(entry: Any, device: str | None) -> None:
    """Take `entry`'s offloading off again; with a `device`, the whole model goes back onto it."""
    if entry.offload is None:
        return
    if entry.offloaded is not None:
        entry.offloaded.remove_all_hooks()
        entry.offloaded = None
    for pipe in entry.pipelines():
        for module in _modules(pipe).values():
            if _grouped(module):
                _ungroup(module)
            if device is not None:
                module.to(device)
    log.info("model %s: offloading (%s) off%s", entry.model_id, entry.offload, f", whole on {device}" if device else "")
    entry.offload = None


def use(pipe: Any, entry: Any, mode: str | None, device: str) -> None:
    """`pipe` in memory mode `mode` (None: the whole model on `device`)."""
    if mode is None:
        disable(entry, device)
    else:
        enable(pipe, entry, mode, device)


def low_memory_on(pipe: Any, entry: Any, device: str, gpu: bool) -> None:
    """Low-memory mode (the out-of-memory fallback, `--low-memory`) for the pipeline about to run: VAE
    slicing and tiling (shared VAE) and, on CUDA, model CPU offload with hooks on the modules `pipe` shares
    with the model's other pipelines (moved to `pipe` when another one carried them), unless routing already
    runs the model offloaded. Attention slicing is not used: it replaces fused SDPA attention with a full
    attention matrix and raises the peak."""
    pipe.vae.enable_slicing()
    pipe.vae.enable_tiling()
    if gpu and entry.offload is None and entry.offloaded is not pipe:  # not run on a GPU yet (none here)
        if entry.offloaded is not None:
            entry.offloaded.remove_all_hooks()
        pipe.enable_model_cpu_offload(device=device)
        entry.offloaded = pipe


def low_memory_off(pipe: Any, entry: Any, device: str) -> None:
    """Low-memory mode off again: whole decodes, and low-memory mode's model offload removed (routing's
    offload, `entry.offload`, stays)."""
    pipe.vae.disable_slicing()
    pipe.vae.disable_tiling()
    if entry.offloaded is not None and entry.offload is None:
        entry.offloaded.remove_all_hooks()
        entry.offloaded = None
        entry.base.to(device)
