"""The worker hook of `params.controlnet` (`sdq.options.controlnet`): the ControlNet pipeline variant,
the control image per call and its keywords."""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from sdq import pipelines
from sdq.exceptions import ModelError
from sdq.options import controlnet
from sdq.sources import FolderSource, source_for
from workers.options.base import Fit, OptionHook

log = logging.getLogger(__name__)

WARM_CONTROLNETS = 2
"""ControlNets a worker keeps loaded per model (least recently used dropped first, with the pipelines made
over them): each holds about a tenth to a half of its model's weights (SD 1.5's: 1.4 GB in fp16)."""


def open_controlnet(model_id: str, fetcher: Any) -> Path:
    """The local folder of a ControlNet (`sdq.options.controlnet.SOURCES`) through the model sources: a built-in,
    a pushed model pulled, or a local folder — a single model's (`config.json` and its weights), which the
    pipelines' folder source refuses for want of `model_index.json`."""
    source = source_for(model_id)
    if not isinstance(source, FolderSource):
        return source.open(fetcher)
    if not (source.path / "config.json").is_file():
        raise ModelError(f"ControlNet {model_id!r}: not a ControlNet folder (no config.json)")
    return source.path


class ControlNetHook(OptionHook):
    """Each ControlNet is loaded once per model entry (through the model sources, on the worker's device
    and dtype) and makes its own pipeline over the model's modules; at most `WARM_CONTROLNETS` stay loaded
    per model, published with the model's warm adapters and counted in the record's `held_gb`."""

    name = controlnet.ControlNet.name

    def derive(self, cache: Any, entry: Any, task: str, variant: str) -> Any:
        """The task's ControlNet pipeline over the base's modules and the ControlNet `variant`."""
        import diffusers

        name = controlnet.class_for(task, entry.family)
        if name is None:
            raise ModelError(f"model {entry.model_id!r} ({entry.family} family) has no ControlNet pipeline for {task!r}")
        nets = entry.parts.setdefault(self.name, OrderedDict())
        if variant not in nets:
            self._room(cache, entry, nets, WARM_CONTROLNETS - 1)
            nets[variant] = self._load(cache, entry, variant)
        nets.move_to_end(variant)
        try:
            pipe = getattr(diffusers, name).from_pipe(entry.base, controlnet=nets[variant], dtype=cache.device.torch_dtype)
        except (TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise ModelError(f"model {entry.model_id!r} cannot run {task!r} with ControlNet {variant!r}: "
                             f"{exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def apply(self, cache: Any, pipe: Any, entry: Any, value: Any) -> None:
        """The chunk's ControlNet is the most recently used one."""
        nets = entry.parts.get(self.name)
        if nets and value["model"] in nets:
            nets.move_to_end(value["model"])

    def warm(self, entry: Any) -> list[str]:
        """The ControlNets loaded for the model, least recently used first."""
        return list(entry.parts.get(self.name) or ())

    def held_gb(self, entry: Any) -> float:
        """GiB of the ControlNets' weights loaded for the model."""
        return sum(p.numel() * p.element_size() for n in (entry.parts.get(self.name) or {}).values()
                   for p in n.parameters()) / 2**30

    @staticmethod
    def _load(cache: Any, entry: Any, variant: str) -> Any:
        """One ControlNet on the worker's device (on the CPU when the model runs offloaded: the offload hooks
        move it). ModelError when it cannot be read or does not fit the device: out of memory while moving
        it there fails the items clearly instead of giving them back to run out of memory again elsewhere."""
        import diffusers

        from workers.loading.offload import free_memory, is_out_of_memory

        path = open_controlnet(variant, cache.fetcher)
        try:
            net = diffusers.ControlNetModel.from_pretrained(path, dtype=cache.device.torch_dtype)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelError(f"cannot load ControlNet {variant!r}: {type(exc).__name__}: {exc}") from exc
        device = "cpu" if entry.offload else cache.device.device
        try:
            return net.to(device)
        except Exception as exc:  # noqa: BLE001 - only out of memory is a model error here
            if not is_out_of_memory(exc):
                raise
            error = f"{type(exc).__name__}: {exc}"
        net = None  # noqa: F841 - its memory goes before the error does
        free_memory(cache.device)
        raise ModelError(f"ControlNet {variant!r} does not fit on {cache.device.device} beside model "
                         f"{entry.model_id!r} (out of memory moving it there: {error})")

    def _room(self, cache: Any, entry: Any, nets: OrderedDict, keep: int) -> None:
        """Drop the least recently used ControlNets (and the pipelines made over them) beyond `keep`."""
        from workers.loading.offload import free_memory

        dropped = []
        while len(nets) > max(0, keep):
            old = next(iter(nets))
            del nets[old]  # no reference to it is left here: the collection below frees it
            for key in [k for k in entry.tasks if k.endswith(f"+{old}")]:
                if entry.offloaded is entry.tasks[key]:
                    entry.offloaded.remove_all_hooks()
                    entry.offloaded = None
                del entry.tasks[key]
            dropped.append(old)
        if dropped:
            free_memory(cache.device)
            log.info("model %s: dropped ControlNet(s) %s (at most %d stay loaded)", entry.model_id, dropped,
                     WARM_CONTROLNETS)

    def images(self, value: Any, load: Callable[[str, str], Any], n: int) -> dict[str, list[Any]]:
        """The job's control image, once per item."""
        return {controlnet.IMAGE: [load(value["image"], "RGB")] * n}

    def call_kwargs(self, spec: pipelines.PipelineSpec, params: dict[str, Any], value: Any,
                    images: dict[str, list[Any]] | None, fit: Fit) -> dict[str, Any]:
        """The control images resized to the call's size, and their weight."""
        use = controlnet.USES.get(spec.name)
        if use is None:
            return {}
        controls = fit((images or {}).get(controlnet.IMAGE, []), params["width"], params["height"])
        return {use.kwarg: controls, "controlnet_conditioning_scale": float(value["scale"])}

