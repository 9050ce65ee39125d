"""The worker hook of `params.step_cache` (`sdq.options.step_cache`): diffusers' cache hooks on the warm
transformer (`transformer.enable_cache(<Method>Config(...))`; Wan 2.2's second expert `transformer_2` too) for a
chunk's calls, image or video, removed after them
(`disable_cache`, also after an exception: the runner undoes every option), so the next job runs the
transformer unhooked and makes the uncached image bit for bit. An operator's default
(`--option-default 'step_cache={"method": ...}'`) applies to jobs that give none, on families that take it.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

from sdq.exceptions import InvalidInput, ModelError
from sdq.families import FLUX, FLUX2, LTX, WAN
from sdq.options import step_cache
from workers.options.base import OptionHook, StepContext, StepFunction

log = logging.getLogger(__name__)

MAG_RATIOS = {FLUX: "FLUX_MAG_RATIOS"}
"""Family -> the name of its calibrated MagCache ratios in `diffusers.hooks.mag_cache`."""

MAG_DEFAULT_STEPS = 28
"""MagCache's step count until a call says its own (diffusers' default)."""

GUIDANCE_DISTILLED = frozenset({FLUX, FLUX2})
"""Families whose models run without an unconditional branch (FasterCache skips none then)."""

TAYLORSEER_MODULES = {WAN: (r"^blocks\.\d+\.attn[12]$",), LTX: (r"^transformer_blocks\.\d+\.attn[12]$",)}
"""Family -> the modules TaylorSeer predicts, where diffusers' default patterns (`...blocks.*attn`, matched whole)
miss its attention modules (`attn1`, `attn2`)."""

OPENS_NO_CONTEXT = frozenset({"Flux2Pipeline"})
"""Pipelines whose call opens no `cache_context` (the hooks' per-call state needs one): the hook opens `"cond"` for
the whole call, one denoiser call per step (guidance-distilled); diffusers clears it with the hooks' state at the
call's end (`maybe_free_model_hooks`)."""

DENOISERS = ("transformer", "transformer_2")
"""The pipeline's attributes that hold a denoiser taking the cache (Wan 2.2's second expert: `transformer_2`)."""


class _Running:
    """The pipeline whose call is running: PAB and FasterCache read its current timestep (a hires pass runs
    another pipeline over the same transformer)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def timestep(self) -> Any:
        """The running call's current timestep."""
        return self.pipe.current_timestep


def config_for(value: dict[str, Any], family: str, transformer: Any, running: _Running, steps: int) -> Any:
    """The diffusers cache config of `value` for a model of `family` running `steps` denoising steps."""
    from diffusers import hooks

    method = value["method"]
    settings = {k: v for k, v in value.items() if k != "method" and v is not None}
    if method == "TaylorSeerCache":  # the factors in the transformer's dtype (diffusers' bf16 is emulated on most CPUs)
        modules = TAYLORSEER_MODULES.get(family)
        return hooks.TaylorSeerCacheConfig(**settings, taylor_factors_dtype=transformer.dtype,
                                           cache_identifiers=list(modules) if modules else None)
    if method == "MagCache":
        if family not in MAG_RATIOS:
            raise ModelError(f"{step_cache.FIELD}: MagCache has no calibrated ratios for {family} models")
        from diffusers.hooks import mag_cache

        return hooks.MagCacheConfig(**settings, num_inference_steps=steps,
                                    mag_ratios=getattr(mag_cache, MAG_RATIOS[family]))
    if method == "FasterCache":
        return hooks.FasterCacheConfig(**settings, current_timestep_callback=running.timestep,
                                       is_guidance_distilled=family in GUIDANCE_DISTILLED)
    if method == "PyramidAttentionBroadcast":
        return hooks.PyramidAttentionBroadcastConfig(**settings, current_timestep_callback=running.timestep)
    return getattr(hooks, f"{method}Config")(**settings)


def denoisers(pipe: Any, entry: Any, method: str) -> list[Any]:
    """The pipeline's transformers (`DENOISERS`), if its family takes `method` and they take diffusers' cache
    hooks; ModelError naming the field otherwise (a job whose model's family was not known at submit)."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is None or not hasattr(transformer, "enable_cache"):
        what = type(transformer or getattr(pipe, "unet", None)).__name__
        raise ModelError(f"{step_cache.FIELD}: model {entry.model_id!r} ({entry.family} family) has no step caching: "
                         f"its denoiser {what} does not support diffusers' cache hooks")
    fam = step_cache.FAMILIES.get(entry.family)
    if fam is None or method not in fam.methods:
        offered = ", ".join(fam.methods) if fam else "no method"
        raise ModelError(f"{step_cache.FIELD}.method: model {entry.model_id!r} ({entry.family} family) takes "
                         f"{offered}, not {method}")
    return [t for name in DENOISERS if (t := getattr(pipe, name, None)) is not None]


def hooked(module: Any) -> list[str]:
    """Names of the diffusers hooks on `module` and its submodules (empty: none)."""
    return [name for m in module.modules() if (reg := getattr(m, "_diffusers_hook", None)) is not None
            for name in reg.hooks]


@dataclass
class _On:
    """A transformer's cache for the running chunk: the option's value, the model's family, the running call
    and the step count the config was made for."""

    value: dict[str, Any]
    family: str
    running: _Running
    steps: int


class StepCacheHook(OptionHook):
    """Enables the job's cache on the transformer for the chunk's calls and disables it after them."""

    name = step_cache.StepCache.name

    def __init__(self) -> None:
        self.on: weakref.WeakKeyDictionary[Any, _On] = weakref.WeakKeyDictionary()
        self.operator: dict[str, Any] | None = None

    def setup(self, parts: Any) -> None:
        """The operator's default (`--option-default 'step_cache={...}'`), checked now: a bad one stops the
        worker at its start with the field named."""
        given = getattr(parts, "option_defaults", {}).get(self.name)
        if given is None or given is False:
            return
        self.operator = {} if given is True else dict(given)
        step_cache.checked(self.operator, None)

    def default(self, family: str | None) -> Any:
        """The operator's default for a family that takes step caching and its method (none when the family is
        not known before the model's load, or takes another method: `true` always fits)."""
        if self.operator is None or family not in step_cache.FAMILIES:
            return None
        try:
            return step_cache.checked(self.operator, family)
        except InvalidInput as exc:
            log.debug("no step cache default for %s models: %s", family, exc.message)
            return None

    def apply(self, cache: Any, pipe: Any, entry: Any, value: Any) -> Any:
        """The cache on for the chunk (nothing for `none`); returns the method."""
        if value.get("method") == step_cache.NONE:
            return None
        running = _Running(pipe)
        for transformer in denoisers(pipe, entry, value["method"]):
            if transformer.is_cache_enabled:  # left by a chunk whose undo did not run: off first
                transformer.disable_cache()
            on = _On(value, entry.family, running, MAG_DEFAULT_STEPS)
            transformer.enable_cache(config_for(value, on.family, transformer, on.running, on.steps))
            self.on[transformer] = on
        return value["method"]

    def stepper(self, ctx: StepContext, value: Any) -> StepFunction | None:
        """Before each call: the cache follows the call's pipeline (PAB and FasterCache read its timestep), has
        a cache context where the pipeline opens none and, for MagCache, its step count (its ratios are laid over
        the steps). No per-step work."""
        for name in DENOISERS:
            transformer = getattr(ctx.pipe, name, None)
            on = self.on.get(transformer) if transformer is not None else None
            if on is None:
                continue
            on.running.pipe = ctx.pipe
            if type(ctx.pipe).__name__ in OPENS_NO_CONTEXT:
                from diffusers.hooks.hooks import CacheContext, _set_cache_context

                _set_cache_context(transformer, CacheContext("cond"))
            if on.value["method"] == "MagCache" and on.steps != ctx.steps:
                transformer.disable_cache()
                on.steps = ctx.steps
                transformer.enable_cache(config_for(on.value, on.family, transformer, on.running, on.steps))
        return None

    def undo(self, cache: Any, pipe: Any, entry: Any, value: Any) -> None:
        """Every cache hook off the transformers."""
        for name in DENOISERS:
            transformer = getattr(pipe, name, None)
            if transformer is None:
                continue
            self.on.pop(transformer, None)
            if getattr(transformer, "is_cache_enabled", False):
                transformer.disable_cache()
