"""The worker hook of `params.controlnet` (`sdq.options.controlnet`): the ControlNet pipeline variant,
the control image per call and its keywords."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from sdq import pipelines
from sdq.exceptions import ModelError
from sdq.options import controlnet
from sdq.sources import FolderSource, source_for
from workers.options.base import Fit, OptionHook


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
    and dtype) and makes its own pipeline over the model's modules."""

    name = controlnet.ControlNet.name

    def derive(self, cache: Any, entry: Any, task: str, variant: str) -> Any:
        """The task's ControlNet pipeline over the base's modules and the ControlNet `variant`."""
        import diffusers

        name = controlnet.class_for(task, entry.family)
        if name is None:
            raise ModelError(f"model {entry.model_id!r} ({entry.family} family) has no ControlNet pipeline for {task!r}")
        nets = entry.parts.setdefault(self.name, {})
        if variant not in nets:
            path = open_controlnet(variant, cache.fetcher)
            try:
                net = diffusers.ControlNetModel.from_pretrained(path, dtype=cache.device.torch_dtype)
            except (OSError, ValueError, TypeError) as exc:
                raise ModelError(f"cannot load ControlNet {variant!r}: {type(exc).__name__}: {exc}") from exc
            nets[variant] = net.to(cache.device.device)
        try:
            pipe = getattr(diffusers, name).from_pipe(entry.base, controlnet=nets[variant], dtype=cache.device.torch_dtype)
        except (TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise ModelError(f"model {entry.model_id!r} cannot run {task!r} with ControlNet {variant!r}: "
                             f"{exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        return pipe

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
