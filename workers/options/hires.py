"""The worker hook of `params.hires` (`sdq.options.hires`): the second pass, an img2img call at the
larger size on the same worker and model."""
from __future__ import annotations

from typing import Any, Callable

from sdq import options, pipelines
from sdq.options import hires
from workers.options.base import CallContext, OptionHook


def enlarge(images: list[Any], width: int, height: int) -> list[Any]:
    """The first pass's images resized to the hires size (A1111's `Lanczos` hires upscaler)."""
    from PIL import Image

    return [im.resize((width, height), Image.Resampling.LANCZOS) for im in images]


def offset_steps(callback: Callable | None, offset: int) -> Callable | None:
    """The step hook of the second pass: its steps count on from the first pass's."""
    if callback is None:
        return None
    return lambda pipe, i, t, kwargs: callback(pipe, i + offset, t, kwargs)


class HiresHook(OptionHook):
    """After each call that made images: enlarge them (Lanczos), then the second pass's pipeline (with the
    same pipeline variant, e.g. ControlNet) at the larger size, with new generators of the same seeds."""

    name = hires.Hires.name

    def after_call(self, ctx: CallContext, value: Any, call: Any) -> Any:
        """The second pass's images in place of the first's (a cancelled first pass stays as it is)."""
        if not call.images:
            return call
        task = hires.SECOND_PASS[ctx.task]
        width, height = options.final_size(ctx.task, ctx.params)
        second = {k: v for k, v in ctx.params.items() if k != self.name}
        second.update(width=width, height=height, steps=value["steps"], strength=value["strength"])
        pipe, _ = ctx.cache.get(ctx.loaded.model_id, task, second)
        init = pipelines.spec(task).images[0].field  # the enlarged image is the second pass's init image
        inputs = {**(ctx.images or {}), init: enlarge(call.images, width, height)}
        return ctx.run(pipe, ctx.loaded, task, second, ctx.prompts, ctx.negative_prompts, ctx.seeds, inputs,
                       offset_steps(ctx.callback, pipelines.spec(ctx.task).first_loop(ctx.params)))
