"""The worker hooks of the request options, one per row of `sdq.options.OPTIONS` (same keys): how each
option runs on the warm pipeline (`workers.options.base.OptionHook`). The runner, the pipeline cache
and the generation call iterate `HOOKS` through the functions below and name no option.
"""
from __future__ import annotations

from typing import Any, Callable

from sdq import options, pipelines
from workers.options.base import CallContext, Fit, OptionHook, StepContext, StepFunction
from workers.options.controlnet import ControlNetHook
from workers.options.hires import HiresHook
from workers.options.loras import LorasHook, adapter_digest
from workers.options.preview import PreviewHook

HOOKS: dict[str, OptionHook] = {h.name: h for h in (LorasHook(), HiresHook(), ControlNetHook(), PreviewHook())}
"""Option name -> its worker hook."""

__all__ = ["HOOKS", "CallContext", "OptionHook", "StepContext", "adapter_digest", "after_call", "apply",
           "call_kwargs", "derive", "images", "setup", "steppers", "undo", "warm"]


def setup(parts: Any) -> None:
    """Give every hook what it needs of the worker, once at its start."""
    for hook in HOOKS.values():
        hook.setup(parts)


def steppers(ctx: StepContext) -> list[StepFunction]:
    """The per-step functions the options of the call's parameters run after each denoising step."""
    return [f for hook, value in _active(ctx.params) if (f := hook.stepper(ctx, value)) is not None]


def _active(params: dict[str, Any]) -> list[tuple[OptionHook, Any]]:
    return [(HOOKS[o.name], value) for o, value in options.active(params)]


def derive(params: dict[str, Any] | None) -> tuple[OptionHook, str] | None:
    """The hook that builds the pipeline variant an item of `params` runs, and the variant's id (None: none)."""
    for name, option in options.OPTIONS.items():
        variant = option.variant(params or {})
        if variant is not None:
            return HOOKS[name], variant
    return None


def apply(cache: Any, pipe: Any, entry: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Switch on every option of `params` for a chunk's calls; option name -> what its `apply` returned.
    When one fails, the ones already on are switched off again before the error goes on."""
    done: list[tuple[OptionHook, Any]] = []
    out: dict[str, Any] = {}
    try:
        for hook, value in _active(params):
            out[hook.name] = hook.apply(cache, pipe, entry, value)
            done.append((hook, value))
    except BaseException:
        for hook, value in reversed(done):
            hook.undo(cache, pipe, entry, value)
        raise
    return out


def undo(cache: Any, pipe: Any, entry: Any, params: dict[str, Any]) -> None:
    """Switch every option of `params` off again, in reverse order."""
    for hook, value in reversed(_active(params)):
        hook.undo(cache, pipe, entry, value)


def images(params: dict[str, Any], load: Callable[[str, str], Any], n: int) -> dict[str, list[Any]]:
    """The images the options of `params` add to each call of a batch of `n`."""
    out: dict[str, list[Any]] = {}
    for hook, value in _active(params):
        out.update(hook.images(value, load, n))
    return out


def call_kwargs(spec: pipelines.PipelineSpec, params: dict[str, Any], images: dict[str, list[Any]] | None,
                fit: Fit) -> dict[str, Any]:
    """The keyword arguments the options of `params` add to a diffusers call."""
    out: dict[str, Any] = {}
    for hook, value in _active(params):
        out.update(hook.call_kwargs(spec, params, value, images, fit))
    return out


def after_call(ctx: CallContext, call: Any) -> Any:
    """A call's result after the further passes the options of its parameters make."""
    for hook, value in _active(ctx.params):
        call = hook.after_call(ctx, value, call)
    return call


def warm(entry: Any) -> list[str]:
    """The weights every option holds loaded in the model `entry` now."""
    return [i for hook in HOOKS.values() for i in hook.warm(entry)]


def held_gb(entries: list[Any]) -> dict[str, float]:
    """Model id -> GiB of the weights the options hold loaded beside it, of the loaded model `entries`
    (models with none left out): published in the capability record (`held_gb`)."""
    out = {e.model_id: round(sum(hook.held_gb(e) for hook in HOOKS.values()), 3) for e in entries}
    return {m: gb for m, gb in out.items() if gb}
