"""A job checked against its model's family at submit: defaults, limits and parameters it takes.

The family is known when the producer can read the model (`sdq.modelinfo.model_info`: built-ins by
id, allowlisted local folders and files); for hub ids and pushed models it is not, and the
request's values go through as given (the worker loads the model with its own family's classes).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from sdq import pipelines, videos
from sdq.exceptions import InvalidInput
from sdq.families import FAMILIES, Family, UnknownFamily
from sdq.modelinfo import ModelInfo, model_info


def info_for(model: str, pipeline: str) -> ModelInfo:
    """What the producer can know of `model`; 422 naming `model` for a family sdq does not run and
    `pipeline` for a pipeline the family has no class for."""
    try:
        info = model_info(model)
    except UnknownFamily as exc:
        raise InvalidInput("model", f"model {model!r}: {exc}", code="unsupported_model") from None
    if info.family is not None and pipelines.spec(pipeline).class_for(info.family.name) is None:
        able = [name for name, spec in pipelines.SPECS.items() if spec.class_for(info.family.name)]
        raise InvalidInput("pipeline", f"model {model!r} is a {info.family.title} model, which has no {pipeline!r} "
                           f"pipeline; it runs {', '.join(able)}", code="unsupported_pipeline")
    if info.pipelines is not None and pipeline not in info.pipelines:
        raise InvalidInput("pipeline", f"model {model!r} runs only {', '.join(info.pipelines)} (its weights are "
                           f"made for that pipeline), not {pipeline!r}", code="unsupported_pipeline")
    return info


def family_defaults(info: ModelInfo, given: dict[str, Any]) -> dict[str, Any]:
    """Job-wide defaults of the model's family for what the request leaves out: size, scheduler,
    guidance and the family's own parameters (recorded in the job, so the image can be made again)."""
    fam = info.family
    if fam is None:
        return {}
    out: dict[str, Any] = {"scheduler": fam.default_scheduler, "guidance_scale": fam.guidance[2],
                           **{p.name: p.default for p in pipelines.family_params(fam.name)}}
    if fam.default_steps is not None:
        out["steps"] = fam.default_steps
    if info.default_side is not None:
        out.update(width=info.default_side, height=info.default_side)
    if videos.is_video(fam.name):  # frames, fps and a non-square size (`sdq.videos`)
        out.update(videos.item_defaults(fam.name, info.default_side))
    return {k: v for k, v in out.items() if k not in given}


def check_item(fam: Family | None, model: str, params: dict[str, Any], where: str, negative: str | None = None) -> None:
    """Raise InvalidInput naming `where` + the field when an item's parameters (and its `negative` prompt,
    when given) do not suit the model's family (nothing is checked when the family is not known here)."""
    if fam is None:
        return
    if negative and not fam.negative_prompt:
        raise InvalidInput(f"{where}negative_prompt", f"{where}negative_prompt: {fam.title} models take no negative "
                           f"prompt; leave it out", code="unsupported_parameter")
    _check_guidance(fam, params, where, negative)
    if videos.is_video(fam.name):
        videos.check_item(fam.name, params, where)
    takes = set(fam.params)
    for name in pipelines.FAMILY_PARAMS:
        if name not in takes and params.get(name) is not None:
            owners = [f for f, ps in _owners().items() if name in ps]
            raise InvalidInput(f"{where}{name}", f"{where}{name}={params[name]!r}: only {', '.join(owners)} models "
                               f"take it; {model!r} is a {fam.title} model", code="unsupported_parameter")
    low, high, _ = fam.guidance
    g = params.get("guidance_scale")
    if g is not None and g != low and low == high:
        raise InvalidInput(f"{where}guidance_scale", f"{where}guidance_scale={g!r}: {fam.title} models are "
                           f"distilled to run without guidance; leave it out (or {low:g})")
    if g is not None and not low <= g <= high:
        raise InvalidInput(f"{where}guidance_scale", f"{where}guidance_scale must be between {low:g} and {high:g} "
                           f"for {fam.title} models, got {g!r}")
    scheduler = params.get("scheduler")
    if scheduler is not None and not fam.runs(scheduler):
        able = [s for s in pipelines.SCHEDULERS if fam.runs(s)]
        raise InvalidInput(f"{where}scheduler", f"{where}scheduler {scheduler!r} does not run {fam.title} models; "
                           f"use {', '.join(able)}")
    for side in ("width", "height"):
        if params.get(side) is not None and params[side] % fam.size_multiple:
            raise InvalidInput(f"{where}{side}", f"{where}{side} must be a multiple of {fam.size_multiple} for "
                               f"{fam.title} models, got {params[side]}")
    for crop, original, side in (("crop_left", "original_width", "width"), ("crop_top", "original_height", "height")):
        value, limit = params.get(crop), params.get(original) or params.get(side)
        if value is not None and limit is not None and value >= limit:
            raise InvalidInput(f"{where}{crop}", f"{where}{crop}={value} lies outside the original image, "
                               f"{limit} pixels along that side")


def with_frames(info: ModelInfo, items: list[Any]) -> ModelInfo:
    """`info` with a video model's working memory per frame times the most frames an item of the job makes
    (the need a worker's device is checked against; image models' is unchanged)."""
    most = max((videos.frames_of(it.params) for it in items), default=1)
    if info.memory is None or most == 1:
        return info
    return replace(info, memory=replace(info.memory, gb_per_mpx=round(info.memory.gb_per_mpx * most, 3)))


def _check_guidance(fam: Family, params: dict[str, Any], where: str, negative: str | None) -> None:
    """The token limit of `max_sequence_length`, and `true_cfg_scale` against the negative prompt: a family
    that guides with it (Flux: `guidance_scale` is a distilled input, not classifier-free guidance) uses a
    negative prompt only with `true_cfg_scale` above 1, and that only with a negative prompt; a family run
    without guidance that has no `true_cfg_scale` (Z-Image-Turbo) takes no negative prompt."""
    tokens = params.get("max_sequence_length")
    if fam.max_tokens is not None and tokens is not None and tokens > fam.max_tokens:
        raise InvalidInput(f"{where}max_sequence_length", f"{where}max_sequence_length={tokens} exceeds the "
                           f"{fam.max_tokens} tokens {fam.title} models take")
    if negative and "true_cfg_scale" not in fam.params and fam.guidance[1] == 0:
        raise InvalidInput(f"{where}negative_prompt", f"{where}negative_prompt is used only with guidance, which "
                           f"{fam.title} models run without; leave the negative prompt out")
    if "true_cfg_scale" not in fam.params or negative is None:
        return
    true_cfg = params.get("true_cfg_scale")
    if true_cfg is not None and true_cfg > 1 and not negative:
        raise InvalidInput(f"{where}true_cfg_scale", f"{where}true_cfg_scale={true_cfg!r} guides against the "
                           f"negative prompt, and there is none; give a negative_prompt or leave it out")
    if negative and (true_cfg is None or true_cfg <= 1):
        raise InvalidInput(f"{where}negative_prompt", f"{where}negative_prompt is used by {fam.title} models only "
                           f"with true_cfg_scale above 1 (got {true_cfg!r}); set params.true_cfg_scale (e.g. 4) "
                           f"or leave the negative prompt out")


def _owners() -> dict[str, tuple[str, ...]]:
    return {f.title: f.params for f in FAMILIES.values()}
