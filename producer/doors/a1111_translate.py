"""An A1111 request translated into an sdq submit body, meaning what it means in A1111 or refused naming the field.

What each A1111 field becomes is listed in docs/INTEGRATIONS.md. Fields sdq cannot honour are accepted only at
the values that change nothing (the defaults A1111 clients such as `webuiapi` send with every request); any
other value is a 422 naming the field.
"""
from __future__ import annotations

import math
from typing import Any

from producer.doors.a1111_prompt import refuse_tags, split_prompt
from producer.doors.a1111_schema import MAX_BATCH, Img2ImgIn, Txt2ImgIn, _Generate
from sdq import families, pipelines
from sdq.families import Family
from sdq.modelinfo import model_info
from sdq.exceptions import InvalidInput
from sdq.options import hires as hires_option

SAMPLER_ALIASES: dict[str, tuple[str, ...]] = {
    "euler_a": ("k_euler_a", "k_euler_ancestral"), "euler": ("k_euler",), "lms": ("k_lms",),
    "heun": ("k_heun",), "dpmpp_2m": ("k_dpmpp_2m",), "ddim": (), "plms": (), "unipc": (), "pndm": (),
    "ddpm": (), "flow_euler": (),
}
"""sdq scheduler -> A1111's aliases of its sampler name (beside the name itself, `sdq.pipelines.SCHEDULERS`)."""

DEFAULT_SAMPLER = "Euler"
"""A1111's sampler when a request names none."""

SCHEDULERS: dict[str, str] = {"automatic": "Automatic"}
"""A1111 scheduler (sigma schedule) names sdq runs -> label: only the sampler's own schedule from the model's
config (sdq builds every scheduler with `from_config` and no overrides)."""

A1111_SCHEDULERS = ("uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal",
                    "align_your_steps", "simple", "normal", "ddim", "beta")
"""A1111's other schedule names (refused: named in the error as known but not run by sdq)."""

ETA_OF: dict[str, float] = {"euler_a": 1.0, "ddim": 0.0}
"""Samplers whose result depends on `eta` -> the eta sdq runs them with (others ignore it, as in A1111)."""

HARMLESS_SETTINGS: dict[str, tuple[Any, ...]] = {
    "CLIP_stop_at_last_layers": (1,), "sd_vae": ("Automatic", "None", None), "samples_format": ("png",),
    "eta_noise_seed_delta": (0,), "img2img_fix_steps": (False,), "enable_pnginfo": (True,),
}
"""`override_settings` keys (and options) accepted at the values that are what sdq does anyway."""

SAME = ("", None, "Use same checkpoint", "Use same sampler", "Use same scheduler")
"""Values of the hires `hr_*` choices that mean "as the first pass"."""


def _refuse(field: str, message: str) -> InvalidInput:
    return InvalidInput(field, f"{field}: {message}", code="unsupported")


def _only(body: Any, field: str, allowed: tuple[Any, ...], why: str) -> None:
    """Refuse `body.field` unless it is one of `allowed` (the values that change nothing here)."""
    value = getattr(body, field)
    if value not in allowed and not (isinstance(value, float) and math.isinf(value) and math.inf in allowed):
        raise _refuse(field, f"{why} (accepted: {', '.join(repr(a) for a in allowed)}; got {value!r})")


def sampler_table() -> list[tuple[str, str, tuple[str, ...]]]:
    """(A1111 sampler name, sdq scheduler, aliases) for every scheduler sdq runs."""
    return [(s.sampler, name, SAMPLER_ALIASES.get(name, ())) for name, s in pipelines.SCHEDULERS.items()]


FLOW_AS_EULER = ("euler", "euler_a")
"""Samplers that run a flow-matching model (SD3, Flux, Qwen-Image, Z-Image) as its one sampler, `flow_euler`:
A1111's `Euler`, and `Euler a` (webuiapi's default; no ancestral noise is added on these models)."""


def scheduler_for(sampler: str | None, schedule: str | None, family: str | None) -> str:
    """The sdq scheduler for an A1111 sampler and schedule; 422 naming `sampler_name` or `scheduler`."""
    name = (sampler or DEFAULT_SAMPLER).strip()
    for label in A1111_SCHEDULERS:  # A1111 < 1.9 spelled the schedule into the sampler: "DPM++ 2M Karras"
        if name.lower().endswith(" " + label.replace("_", " ")):
            raise InvalidInput("sampler_name", f"sampler_name: {name!r}: the {label!r} schedule is not run by sdq: "
                               "each sampler runs with the model's own schedule ('Automatic')",
                               code="unknown_sampler")
    check_schedule(schedule)
    for title, sched, aliases in sampler_table():
        if name.lower() in (title.lower(), sched, *aliases):
            if family is not None and not families.family(family).runs(sched) and sched in FLOW_AS_EULER:
                return "flow_euler"  # the one sampler of a flow-matching model
            return sched
    raise InvalidInput("sampler_name", f"sampler_name: unknown sampler {name!r}; sdq runs: "
                       f"{', '.join(t for t, _, _ in sampler_table())}", code="unknown_sampler")


def check_schedule(schedule: str | None) -> None:
    """Refuse a sigma schedule sdq does not run (422 naming `scheduler`)."""
    if schedule is None or schedule.strip().lower().replace(" ", "_") in (*SCHEDULERS, ""):
        return
    known = schedule.strip().lower().replace(" ", "_") in A1111_SCHEDULERS
    raise InvalidInput("scheduler", f"scheduler: {schedule!r} " + (
        "is not run by sdq: each sampler runs with the model's own schedule ('Automatic')" if known else
        f"is unknown; sdq runs: {', '.join(SCHEDULERS.values())}"), code="unknown_scheduler")


def _check_common(body: _Generate, scheduler: str) -> None:
    """Refuse values of A1111 fields sdq does not have, unless they change nothing."""
    _only(body, "styles", (None, []), "prompt styles are not stored in sdq")
    _only(body, "subseed_strength", (0, 0.0), "variation seeds are not supported")
    if body.seed_resize_from_h > 0 or body.seed_resize_from_w > 0:
        raise _refuse("seed_resize_from_h" if body.seed_resize_from_h > 0 else "seed_resize_from_w",
                      "resizing the seed is not supported")
    _only(body, "restore_faces", (None, False), "face restoration is not supported")
    _only(body, "tiling", (None, False), "tiling is not supported")
    if body.eta is not None and scheduler in ETA_OF and body.eta != ETA_OF[scheduler]:
        raise _refuse("eta", f"the {pipelines.SCHEDULERS[scheduler].sampler} sampler runs with eta "
                      f"{ETA_OF[scheduler]} here (got {body.eta})")
    _only(body, "s_min_uncond", (None, 0, 0.0), "not supported")
    _only(body, "s_churn", (None, 0, 0.0), "not supported")
    _only(body, "s_tmin", (None, 0, 0.0), "not supported")
    _only(body, "s_tmax", (None, 0, 0.0, math.inf), "not supported")
    _only(body, "s_noise", (None, 1, 1.0), "not supported")
    _only(body, "refiner_checkpoint", (None, "", "None"), "refiner models are not supported")
    _only(body, "firstpass_image", (None, ""), "not supported")
    _only(body, "disable_extra_networks", (False,), "LoRA tags are always applied")
    _only(body, "script_name", (None, ""), "scripts are not supported")
    _only(body, "script_args", ([],), "scripts are not supported")
    _only(body, "infotext", (None, ""), "not supported: send the fields themselves")
    for name, script in body.alwayson_scripts.items():
        args = script.get("args") if isinstance(script, dict) else script
        if args not in ([], [False], None):
            raise _refuse(f"alwayson_scripts.{name}", "extension scripts are not supported (only disabled ones)")
    if body.comments:
        raise _refuse("comments", "not supported")


def _check_hires(body: Txt2ImgIn, hires_upscaler: str) -> dict[str, Any] | None:
    """`params.hires` of a txt2img body (None without `enable_hr`; the hr_* fields are then unused, as in A1111)."""
    if not body.enable_hr:
        return None
    if body.hr_upscaler not in (None, "", hires_upscaler):
        raise _refuse("hr_upscaler", f"sdq enlarges the first pass with {hires_upscaler!r}, got {body.hr_upscaler!r}")
    if body.hr_resize_x or body.hr_resize_y:
        raise _refuse("hr_resize_x" if body.hr_resize_x else "hr_resize_y", "give hr_scale instead")
    for field in ("hr_checkpoint_name", "hr_sampler_name", "hr_scheduler"):
        if getattr(body, field) not in SAME:
            raise _refuse(field, "the second pass runs with the first pass's checkpoint, sampler and scheduler")
    for field, first in (("hr_prompt", body.prompt), ("hr_negative_prompt", body.negative_prompt)):
        if getattr(body, field) not in ("", first):
            raise _refuse(field, "the second pass uses the first pass's prompts")
    hires: dict[str, Any] = {"scale": body.hr_scale,
                             "strength": body.denoising_strength if body.denoising_strength is not None else 0.7}
    if body.hr_second_pass_steps:
        hires["steps"] = body.hr_second_pass_steps
    return hires


def _check_inpaint(body: Img2ImgIn) -> None:
    """Refuse img2img/inpaint options sdq does not have (the mask's own ones only with a mask)."""
    _only(body, "resize_mode", (0,), "sdq resizes the init image to width x height ('Just resize')")
    _only(body, "initial_noise_multiplier", (None, 1, 1.0), "not supported")
    _only(body, "latent_mask", (None, ""), "not supported")
    if not body.init_images:
        raise InvalidInput("init_images", "init_images: give one base64 image", code="missing")
    if len(body.init_images) > 1:
        raise _refuse("init_images", f"sdq starts from one init image, got {len(body.init_images)}")
    if body.mask is None:
        return
    for field in ("mask_blur", "mask_blur_x", "mask_blur_y"):
        _only(body, field, (None, 0, 4), "sdq does not blur the mask (4 is A1111's default, accepted as is)")
    _only(body, "inpainting_fill", (0, 1), "masked content starts from the init image ('original'); "
          "latent noise/nothing are not supported")
    _only(body, "inpainting_mask_invert", (0, 1), "0 repaints the white part, 1 the black part")


def _model(body: _Generate, default_model: str, models: list[str]) -> str:
    """The checkpoint: `override_settings.sd_model_checkpoint`, else the tenant's option, else sdq's default."""
    settings = body.override_settings or {}
    for key, value in settings.items():
        if key != "sd_model_checkpoint" and value not in HARMLESS_SETTINGS.get(key, ()):
            raise _refuse(f"override_settings.{key}", f"this setting is not supported at {value!r}")
    if "sd_model_checkpoint" not in settings:
        return default_model
    return checkpoint(settings["sd_model_checkpoint"], models, "override_settings.sd_model_checkpoint")


def checkpoint(title: Any, models: list[str], field: str) -> str:
    """The model id an A1111 checkpoint title names (an id, or a title with its ` [hash]`); 422 naming `field`."""
    if isinstance(title, str):
        name = title.strip()
        if name.endswith("]") and " [" in name:
            name = name[: name.rindex(" [")]
        if name in models:
            return name
    raise InvalidInput(field, f"{field}: unknown checkpoint {title!r}; sdq serves: {', '.join(models)}",
                       code="unknown_model")


def _family(model: str) -> Family | None:
    """The model's family as the producer reads it (a distilled model's as that variant sees it), or None."""
    try:
        return model_info(model).family
    except Exception:  # read again (and refused naming the model) by the submit
        return None


def guidance(body: _Generate, fam: Family | None) -> dict[str, Any]:
    """The sdq guidance parameters of A1111's `cfg_scale` (and Forge's `distilled_cfg_scale`), as Forge reads
    them per family: where the family takes real CFG beside a distilled guidance input (Flux, Qwen-Image),
    `cfg_scale` is that CFG, used against a negative prompt (without one, or at 1 or below, one pass and no CFG)
    and `distilled_cfg_scale` is the guidance input; a family run without guidance (a timestep-distilled
    model, Z-Image-Turbo) ignores `cfg_scale`; elsewhere it is the guidance scale, as in A1111."""
    if fam is not None and "true_cfg_scale" in fam.params:
        out: dict[str, Any] = {}
        if body.negative_prompt and body.cfg_scale > 1:
            out["true_cfg_scale"] = body.cfg_scale
        if body.distilled_cfg_scale is not None:
            out["guidance_scale"] = body.distilled_cfg_scale
        return out
    if body.distilled_cfg_scale is not None:
        raise _refuse("distilled_cfg_scale", f"only models with a distilled guidance input take it (Flux); this "
                      f"model is {fam.title if fam else 'of a family not known here'}: use cfg_scale")
    if fam is not None and fam.guidance[1] == 0:
        return {}
    return {"guidance_scale": body.cfg_scale}


def submit_body(body: Txt2ImgIn | Img2ImgIn, default_model: str, models: list[str], allowlist: tuple[str, ...],
                hires_upscaler: str = hires_option.UPSCALER) -> dict[str, Any]:
    """The `POST /v1/jobs` body of an A1111 txt2img/img2img request (image fields left for the caller to fill:
    `params.init_image`, `params.mask_image`); InvalidInput naming the A1111 field it cannot honour."""
    # 1. Model, sampler and the fields sdq has no use for.
    model = _model(body, default_model, models)
    fam = _family(model)
    scheduler = scheduler_for(body.sampler_name or body.sampler_index, body.scheduler, fam.name if fam else None)
    _check_common(body, scheduler)
    if body.batch_size * body.n_iter > MAX_BATCH:
        raise InvalidInput("batch_size", f"batch_size x n_iter: {body.batch_size * body.n_iter} images exceed "
                           f"this door's limit of {MAX_BATCH} per request")
    # 2. Prompt syntax: LoRA tags become adapters.
    prompt, loras = split_prompt(body.prompt, allowlist)
    refuse_tags(body.negative_prompt, "negative_prompt")
    if not prompt.strip():
        raise InvalidInput("prompt", "prompt: sdq needs a non-empty prompt", code="missing")
    # 3. The sdq parameters.
    params: dict[str, Any] = {
        "steps": body.steps, "width": body.width, "height": body.height, **guidance(body, fam),
        "scheduler": scheduler, "negative_prompt": body.negative_prompt,
        "images_per_prompt": body.batch_size * body.n_iter}
    if body.seed >= 0:
        params["seed"] = body.seed
    if loras:
        params["loras"] = loras
    pipeline = "txt2img"
    if isinstance(body, Txt2ImgIn):
        hires = _check_hires(body, hires_upscaler)
        if hires:
            params["hires"] = hires
    else:
        _check_inpaint(body)
        pipeline = "inpaint" if body.mask is not None else "img2img"
        params["strength"] = body.denoising_strength if body.denoising_strength is not None else 0.75
    return {"prompts": [prompt], "model": model, "pipeline": pipeline, "params": params}


SDQ_FIELDS: tuple[tuple[str, str], ...] = (
    ("prompts", "prompt"), ("params.loras", "prompt"), ("params.steps", "steps"),
    ("params.guidance_scale", "cfg_scale"), ("params.true_cfg_scale", "cfg_scale"), ("params.width", "width"), ("params.height", "height"),
    ("params.scheduler", "sampler_name"), ("params.negative_prompt", "negative_prompt"), ("params.seed", "seed"),
    ("params.images_per_prompt", "batch_size"), ("params.strength", "denoising_strength"),
    ("params.hires.scale", "hr_scale"), ("params.hires.strength", "denoising_strength"),
    ("params.hires.steps", "hr_second_pass_steps"), ("params.init_image", "init_images"),
    ("params.mask_image", "mask"), ("model", "override_settings.sd_model_checkpoint"),
    ("pipeline", "override_settings.sd_model_checkpoint"), ("items", "batch_size"), ("sweep", "batch_size"),
)
"""sdq request field (prefix) -> the A1111 field an error about it names."""


def a1111_field(field: str | None) -> str | None:
    """The A1111 field behind an sdq submit error's field (unchanged when it has no counterpart)."""
    for prefix, name in SDQ_FIELDS:
        if field and (field == prefix or field.startswith((prefix + ".", prefix + "["))):
            return name
    return field
