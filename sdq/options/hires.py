"""`params.hires`: the hires fix — a first pass at width x height, enlarged, then an img2img pass at the
larger size (on the same worker and model; the worker hook is `workers.options.hires`)."""
from __future__ import annotations

import argparse
from typing import Any, Callable

from sdq import defaults, pipelines
from sdq.exceptions import InvalidInput
from sdq.options.base import FormField, OptionSpec, Pass, Submit
from sdq.params import Param, check_denoising

SCALE = 2.0
"""How much the hires fix enlarges the first pass's image (`params.hires.scale`)."""

STRENGTH = 0.7
"""Denoising strength of the hires fix's second pass (`params.hires.strength`), as A1111's default."""

UPSCALER = "Lanczos"
"""How the first pass's image is enlarged (A1111's `Hires upscaler` label): a Lanczos resize of the decoded image."""

SECOND_PASS = {"txt2img": "img2img"}
"""Pipeline -> the pipeline that makes its second pass (the pipelines that take the hires fix)."""

PARAMS: tuple[Param, ...] = (
    Param("scale", float, 1, 4, SCALE, infotext="Hires upscale",
          doc="the second pass's size over the first's (rounded down to a multiple of 8)"),
    Param("strength", float, 0.01, 1, STRENGTH, infotext="Denoising strength",
          doc="how much the second pass changes the enlarged image"),
    Param("steps", int, 1, defaults.MAX_STEPS, None, infotext="Hires steps",
          doc="the second pass's `num_inference_steps` (it runs `steps * strength`); default: the item's steps"),
)
"""`params.hires` fields."""


def second_size(value: dict[str, Any], width: int, height: int) -> tuple[int, int]:
    """The second pass's size for a first pass of `width` x `height`."""
    return (max(8, int(width * value["scale"]) // 8 * 8), max(8, int(height * value["scale"]) // 8 * 8))


def size_fault(value: dict[str, Any], width: int, height: int, size_multiple: int) -> tuple[str, str] | None:
    """(the side, a message) when the second pass's size for `width` x `height` is not a multiple of the
    family's `size_multiple`; None when it is."""
    big = second_size(value, width, height)
    side = next((name for name, n in zip(("width", "height"), big) if n % size_multiple), None)
    if side is None:
        return None
    return side, (f"params.hires.scale={value['scale']} makes {width}x{height} {big[0]}x{big[1]}, not a multiple "
                  f"of {size_multiple} as this model's family needs")


class Hires(OptionSpec):
    """The hires fix: one more pass, counted in the item's size, steps and work."""

    name = "hires"
    title = "hires fix"
    doc = "`params.hires`: a txt2img pass, enlarged, then an img2img pass."
    fields = PARAMS
    schema_name = "HiresIn"
    pipelines = tuple(SECOND_PASS)
    size_field = "params.hires.scale"
    legend = "Hires fix"
    toggle = "Enlarge, then denoise again at the larger size"
    form = (FormField("scale", "Upscale by", attrs=(("min", "1"), ("max", "4"), ("step", "0.25"), ("value", "2"),
                                                     ("inputmode", "decimal"))),
            FormField("strength", "Hires denoising strength", attrs=(("min", "0.01"), ("max", "1"), ("step", "0.05"),
                                                                     ("value", "0.7"), ("inputmode", "decimal"))),
            FormField("steps", "Hires steps", attrs=(("min", "1"), ("placeholder", "same as Steps"),
                                                     ("inputmode", "numeric"))))

    def offered(self, pipeline: str, family: str | None) -> bool:
        """Pipelines with a second pass, for a family that has a class for that pass (Flux.2 has no img2img)."""
        return pipeline in SECOND_PASS and (family is None or
                                            pipelines.spec(SECOND_PASS[pipeline]).class_for(family) is not None)

    def check(self, value: Any, ctx: Submit) -> Any:
        """The fields with their defaults (the steps stay None: each item's own)."""
        if value is None:
            return None
        if ctx.spec.name not in SECOND_PASS:
            raise InvalidInput("params.hires", f"pipeline {ctx.spec.name!r} takes no hires fix "
                               f"({', '.join(SECOND_PASS) or 'none'} do)", code="unexpected_hires")
        if ctx.family is not None and not self.offered(ctx.spec.name, ctx.family):
            raise InvalidInput("params.hires", f"model {ctx.model!r} ({ctx.family} family) has no "
                               f"{SECOND_PASS[ctx.spec.name]!r} pipeline for the hires fix's second pass",
                               code="unexpected_hires")
        return {p.name: value.get(p.name, p.default) for p in PARAMS}

    def add(self, params: dict[str, Any], value: Any, size_multiple: int = 8) -> dict[str, Any]:
        """The steps default to the item's; 422 naming `params.hires.scale` when the larger size is not a
        multiple of the family's `size_multiple`."""
        out = {**params, self.name: {**value, "steps": value.get("steps") or params["steps"]}}
        check_denoising(out[self.name]["steps"], value["strength"], "params.hires.strength")
        fault = size_fault(value, params["width"], params["height"], size_multiple)
        if fault:
            raise InvalidInput("params.hires.scale", fault[1], code="bad_size")
        return out

    def passes(self, params: dict[str, Any], width: int, height: int) -> list[Pass]:
        """The second pass: diffusers' img2img runs `steps * strength` steps at the larger size."""
        value = params.get(self.name)
        if not value:
            return []
        return [Pass(max(1, int(value["steps"] * value["strength"])), *second_size(value, width, height))]

    def infotext(self, value: Any, applied: Any = None) -> dict[str, Any]:
        """A1111's labels: `Hires upscale`, `Denoising strength`, `Hires steps`, `Hires upscaler`."""
        return {**{p.infotext: value[p.name] for p in PARAMS}, "Hires upscaler": UPSCALER}

    def from_infotext(self, info: dict[str, Any]) -> Any:
        """The fields under their labels (present when `Hires upscale` is)."""
        if not info.get("Hires upscale"):
            return None
        return {p.name: p.parse(str(info[p.infotext])) for p in PARAMS if info.get(p.infotext)}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """`--hires-scale`, `--hires-strength`, `--hires-steps`."""
        parser.add_argument("--hires-scale", dest="hires_scale", type=float, help="hires fix: enlarge by this (1..4)")
        parser.add_argument("--hires-strength", dest="hires_strength", type=float,
                            help="hires fix: second pass strength")
        parser.add_argument("--hires-steps", dest="hires_steps", type=int, help="hires fix: second pass steps")

    def from_args(self, args: argparse.Namespace, upload: Callable[[str, str], str]) -> Any:
        """The fields any flag gives."""
        given = {p.name: getattr(args, f"hires_{p.name}", None) for p in PARAMS}
        return {k: v for k, v in given.items() if v is not None} or None
