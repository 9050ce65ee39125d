"""`params.step_cache`: diffusers' step caching for every item of the job — the transformer reuses what it
computed at earlier denoising steps instead of running all its blocks at every step (faster, and the image
differs a little from the uncached one; `make bench`, section "step caching", measures both).

`{"method": ..., <its settings>}` names one of diffusers' cache configs (`FirstBlockCacheConfig` is
`"FirstBlockCache"` ...) and its settings by the config's own field names; `true` asks for the model
family's default method. Only families whose denoiser mixes in diffusers' `CacheMixin` take it, each the methods
that run on its transformer and pipeline (`FAMILIES`): SD's and SDXL's UNets and SD3's and Z-Image's transformers
do not, and are refused at submit naming `params.step_cache`.
The worker hook (`workers.options.step_cache`) switches the cache on the warm transformer for the chunk
and off after it (`disable_cache`), so a later job without it makes the uncached image bit for bit.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable

from sdq.exceptions import InvalidInput
from sdq.families import FLUX, FLUX2, FLUX2_KLEIN, LTX, QWEN_IMAGE, WAN
from sdq.modelinfo import BUILTIN_FAMILIES
from sdq.options.base import FormField, OptionSpec, Submit
from sdq.params import Param, Text

FIELD = "params.step_cache"
"""How errors name the request field."""

NONE = "none"
"""`{"method": "none"}`: no step cache, also where a worker's operator default would put one on."""

METHODS: dict[str, tuple[Param, ...]] = {
    "FirstBlockCache": (
        Param("threshold", float, 0, 1, 0.05, doc="skip the other blocks while the first block's residual "
                                                   "changes less than this (relative mean absolute difference)"),),
    "TaylorSeerCache": (
        Param("cache_interval", int, 1, 100, 5, doc="steps between two full computations"),
        Param("disable_cache_before_step", int, 0, 1000, 3, doc="full computation before this step"),
        Param("disable_cache_after_step", int, 0, 1000, None, doc="full computation from this step on"),
        Param("max_order", int, 0, 4, 1, doc="order of the Taylor series that predicts the skipped outputs")),
    "MagCache": (
        Param("threshold", float, 0, 1, 0.06, doc="largest accumulated magnitude error skipped"),
        Param("max_skip_steps", int, 1, 100, 3, doc="most consecutive steps skipped"),
        Param("retention_ratio", float, 0, 1, 0.2, doc="share of the first steps never skipped")),
    "FasterCache": (
        Param("spatial_attention_block_skip_range", int, 1, 100, 2, doc="compute attention every N steps"),
        Param("unconditional_batch_skip_range", int, 1, 100, 5, doc="compute the unconditional branch every N steps"),
        Param("alpha_low_frequency", float, 0, 10, 1.1, doc="weight of the low-frequency update"),
        Param("alpha_high_frequency", float, 0, 10, 1.1, doc="weight of the high-frequency update")),
    "PyramidAttentionBroadcast": (
        Param("spatial_attention_block_skip_range", int, 1, 100, 2, doc="compute self-attention every N steps"),
        Param("cross_attention_block_skip_range", int, 1, 100, None, doc="compute cross-attention every N steps")),
}
"""Method (a diffusers cache config's name without `Config`) -> its settings (the config's field names), with
sdq's ranges and the config's defaults (PyramidAttentionBroadcast's spatial skip range: 2, the value
diffusers' documentation uses, where the config's None would skip nothing)."""


@dataclass(frozen=True)
class FamilyCache:
    """How one family's denoiser takes step caching: its methods, the default method (`true`) and settings
    whose default differs from the config's for it."""

    methods: tuple[str, ...]
    default: str
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)


FAMILIES: dict[str, FamilyCache] = {
    # FluxTransformer2DModel mixes in CacheMixin; MagCache uses diffusers' FLUX_MAG_RATIOS (calibrated on
    # FLUX.1 dev), FasterCache runs guidance-distilled (no unconditional branch unless true CFG).
    FLUX: FamilyCache(tuple(METHODS), "FirstBlockCache"),
    # Flux2Transformer2DModel: FirstBlockCache raises in diffusers (its head block returns the two streams, its
    # tail block the joined one); PAB and FasterCache count every call, and Klein's base models run the
    # unconditional branch as a call of its own, which would reuse the conditional one's attention.
    FLUX2_KLEIN: FamilyCache(("TaylorSeerCache",), "TaylorSeerCache"),
    # Flux.2 dev: the same transformer, guidance-distilled (one call per step, so PAB's and FasterCache's counters
    # hold); Flux2Pipeline opens no cache context: the worker hook opens one for the call.
    FLUX2: FamilyCache(("TaylorSeerCache", "FasterCache", "PyramidAttentionBroadcast"), "TaylorSeerCache"),
    # QwenImageTransformer2DModel: the unconditional branch (true CFG) is a call of its own, as on Klein.
    QWEN_IMAGE: FamilyCache(("FirstBlockCache", "TaylorSeerCache"), "FirstBlockCache"),
    # WanTransformer3DModel: as Qwen-Image (TaylorSeer on the blocks' attn1/attn2, which its defaults miss).
    WAN: FamilyCache(("FirstBlockCache", "TaylorSeerCache"), "FirstBlockCache"),
    # LTXVideoTransformer3DModel: both branches in one batched call, so PAB's counters hold; FasterCache
    # raises on its packed latents.
    LTX: FamilyCache(("FirstBlockCache", "TaylorSeerCache", "PyramidAttentionBroadcast"), "FirstBlockCache"),
}
"""Family -> how its denoiser takes step caching: only the methods that run on its transformer in the pinned
diffusers (MagCache needs calibrated ratios, which diffusers has for Flux.1 alone). A family not listed has no
step cache: SD and SDXL's UNets, SD3's and Z-Image's transformers (no `CacheMixin` in diffusers), Qwen-Image-Edit
(not tried: its tiny model's processor needs torchvision)."""

PER_CALL = ("FasterCache", "PyramidAttentionBroadcast")
"""Methods whose state counts every transformer call: with true CFG (`true_cfg_scale` above 1 on Flux.1) a step
makes two calls, and the unconditional one would reuse the conditional one's attention. The other methods keep
each branch's state apart (diffusers' cache contexts)."""

DEFAULT_METHOD = "FirstBlockCache"
"""The method of `true` when the model's family is not known at submit (the worker checks it then)."""


def settings_of(method: str) -> dict[str, Param]:
    """The settings of `method` by name."""
    return {p.name: p for p in METHODS[method]}


def _all_fields() -> tuple[Param | Text, ...]:
    """The schema's fields: the method and every method's settings (each name once, over its widest range)."""
    merged: dict[str, Param] = {}
    for params in METHODS.values():
        for p in params:
            old = merged.get(p.name)
            merged[p.name] = p if old is None else Param(p.name, p.kind, min(old.low, p.low), max(old.high, p.high),
                                                         None, doc=old.doc)
    return (Text("method", 40, doc=f"one of {', '.join(METHODS)} (or `none`); default: the family's"),
            *merged.values())


def describe(value: dict[str, Any]) -> str:
    """The infotext value: the method, then its settings as `name=value` (`FirstBlockCache threshold=0.05`)."""
    settings = " ".join(f"{k}={v}" for k, v in value.items() if k != "method" and v is not None)
    return f"{value['method']} {settings}".strip()


def parse(text: str) -> dict[str, Any]:
    """The value `describe` wrote (ValueError for an unknown method or setting)."""
    method, *pairs = text.split()
    if method not in METHODS:
        raise ValueError(f"unknown step cache method {method!r}")
    known = settings_of(method)
    out: dict[str, Any] = {"method": method}
    for pair in pairs:
        name, _, raw = pair.partition("=")
        if name not in known:
            raise ValueError(f"{method} has no setting {name!r}")
        out[name] = known[name].parse(raw)
    return out


def checked(value: dict[str, Any], family: str | None) -> dict[str, Any]:
    """The method (the family's default when none is named) with every setting filled in; InvalidInput
    naming the field for a method the family does not take, or a setting of another method."""
    fam = FAMILIES.get(family) if family else None
    method = value.get("method") or (fam.default if fam else DEFAULT_METHOD)
    if method == NONE:
        return {"method": NONE}
    offered = fam.methods if fam else tuple(METHODS)
    if method not in offered:
        raise InvalidInput(f"{FIELD}.method", f"unknown step cache method {method!r}; "
                           f"{family or 'this model'} models take {', '.join(offered)} (or none)",
                           code="bad_step_cache")
    known = settings_of(method)
    for name, given in value.items():
        if name != "method" and given is not None and name not in known:
            raise InvalidInput(f"{FIELD}.{name}", f"{method} has no setting {name!r}; its settings are "
                               f"{', '.join(known)}", code="bad_step_cache")
        if name in known and given is not None and not known[name].low <= given <= known[name].high:
            p = known[name]
            raise InvalidInput(f"{FIELD}.{name}", f"{method}'s {name} must be within {p.low:g}..{p.high:g}, "
                               f"not {given}", code="bad_step_cache")
    own = fam.settings.get(method, {}) if fam else {}
    out: dict[str, Any] = {"method": method}
    for n, p in known.items():
        out[n] = value[n] if value.get(n) is not None else own.get(n, p.default)
    before, after = out.get("disable_cache_before_step"), out.get("disable_cache_after_step")
    if after is not None and before is not None and after <= before:
        raise InvalidInput(f"{FIELD}.disable_cache_after_step", f"disable_cache_after_step ({after}) must be "
                           f"after disable_cache_before_step ({before})", code="bad_step_cache")
    return out


class StepCache(OptionSpec):
    """Step caching: checked against the model family's denoiser, in the result-cache key (it changes the
    image) and the infotext (`Step cache: FirstBlockCache threshold=0.05`), switched on and off per chunk."""

    name = "step_cache"
    title = "step caching"
    doc = ("`params.step_cache`: diffusers' step caching on the model's transformer: `{\"method\": ..., "
           "<its settings>}` (FirstBlockCache, TaylorSeerCache, MagCache, FasterCache, PyramidAttentionBroadcast, "
           "settings by the diffusers config's names) or `true` for the family's default")
    fields = _all_fields()
    schema_name = "StepCacheIn"
    flag = True
    pipelines = ("txt2img", "img2img", "inpaint", "edit", "txt2video", "img2video")
    legend = "Step caching"
    toggle = "Reuse the transformer's work between steps (faster; the image changes a little)"
    form = (FormField("method", "Method", "text", (("placeholder", "the family's default"),
                                                   ("autocomplete", "off"))),
            FormField("threshold", "Threshold (FirstBlockCache, MagCache)",
                      attrs=(("min", "0"), ("max", "1"), ("step", "0.01"), ("inputmode", "decimal"))))

    def check(self, value: Any, ctx: Submit) -> Any:
        """The method and its settings filled in; refused on a family whose denoiser has no cache support."""
        if value is None or value is False:
            return None
        value = super().check({} if value is True else value, ctx)
        family = ctx.family or BUILTIN_FAMILIES.get(ctx.model)
        if family is not None and family not in FAMILIES:
            raise InvalidInput(FIELD, f"model {ctx.model!r} ({family} family) has no step caching: its denoiser "
                               f"does not support diffusers' cache hooks; {', '.join(FAMILIES)} models do",
                               code="unsupported_step_cache")
        return checked(value, family)

    def add(self, params: dict[str, Any], value: Any, size_multiple: int = 8) -> dict[str, Any]:
        """The item's parameters with the cache; a 422 for a per-call method on a job that runs true CFG."""
        true_cfg = params.get("true_cfg_scale") or 1
        if value.get("method") in PER_CALL and true_cfg > 1:
            raise InvalidInput(f"{FIELD}.method", f"{value['method']} counts every transformer call, and true CFG "
                               f"(true_cfg_scale={true_cfg:g}) makes two per step; use FirstBlockCache, "
                               f"TaylorSeerCache or MagCache, which keep the two apart", code="bad_step_cache")
        return super().add(params, value, size_multiple)

    def offered(self, pipeline: str, family: str | None) -> bool:
        """Pipelines that take it, on families whose denoiser does."""
        return pipeline in self.pipelines and (family is None or family in FAMILIES)

    def infotext(self, value: Any, applied: Any = None) -> dict[str, Any]:
        """`Step cache: <method> <name=value ...>` (nothing for `none`)."""
        return {} if value.get("method") == NONE else {"Step cache": describe(value)}

    def from_infotext(self, info: dict[str, Any]) -> Any:
        """The method and settings under `Step cache` (None when absent or unreadable)."""
        text = str(info.get("Step cache") or "")
        try:
            return parse(text) if text else None
        except ValueError:
            return None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """`--step-cache METHOD[:name=value,...]`."""
        parser.add_argument("--step-cache", dest="step_cache", metavar="METHOD[:NAME=VALUE,...]",
                            help="diffusers step caching on the transformer, e.g. FirstBlockCache:threshold=0.1 "
                                 "(`default`: the family's)")

    def from_args(self, args: argparse.Namespace, upload: Callable[[str, str], str]) -> Any:
        """The flag as the option's object."""
        given = getattr(args, "step_cache", None)
        return from_flag(given) if given else None


def from_flag(text: str) -> dict[str, Any]:
    """`METHOD[:name=value,...]` (`default`: the family's method) as the option's object (values as numbers)."""
    method, _, rest = text.partition(":")
    out: dict[str, Any] = {} if method in ("", "default") else {"method": method}
    for pair in filter(None, rest.split(",")):
        name, _, raw = pair.partition("=")
        out[name.strip()] = float(raw) if any(c in raw for c in ".eE") else int(raw)
    return out
