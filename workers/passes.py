"""What `params.controlnet` and `params.hires` add to a pipeline call: the control image's keywords, and
the hires fix's second pass (an img2img call at the larger size, on the same worker and model)."""
from __future__ import annotations

from typing import Any, Callable

from sdq import pipelines

CONTROL_IMAGE = "controlnet.image"
"""Key of the control images in a call's `images` (one per prompt, like the image inputs)."""


def controlnet_id(params: dict[str, Any]) -> str | None:
    """The ControlNet the item runs with (None: none)."""
    control = params.get("controlnet")
    return control["model"] if control else None


def control_kwargs(spec: pipelines.PipelineSpec, params: dict[str, Any], images: dict[str, list[Any]] | None,
                   fit: Callable[[list[Any], int, int], list[Any]]) -> dict[str, Any]:
    """The ControlNet keywords of a call: the control images resized to the call's size, and their weight."""
    control = params.get("controlnet")
    if not control or spec.controlnet is None:
        return {}
    controls = fit((images or {}).get(CONTROL_IMAGE, []), params["width"], params["height"])
    return {spec.controlnet.kwarg: controls, "controlnet_conditioning_scale": float(control["scale"])}


def second_pass_params(spec: pipelines.PipelineSpec, params: dict[str, Any]) -> dict[str, Any]:
    """The hires fix's img2img parameters: the larger size, its steps and strength, the same ControlNet."""
    hires = params["hires"]
    width, height = spec.final_size(params)
    out = {k: v for k, v in params.items() if k != "hires"}
    out.update(width=width, height=height, steps=hires["steps"], strength=hires["strength"])
    return out


def enlarge(images: list[Any], width: int, height: int) -> list[Any]:
    """The first pass's images resized to the hires size (A1111's `Lanczos` hires upscaler)."""
    from PIL import Image

    return [im.resize((width, height), Image.Resampling.LANCZOS) for im in images]


def offset_steps(callback: Callable | None, offset: int) -> Callable | None:
    """The step hook of the second pass: its steps count on from the first pass's."""
    if callback is None:
        return None
    return lambda pipe, i, t, kwargs: callback(pipe, i + offset, t, kwargs)
