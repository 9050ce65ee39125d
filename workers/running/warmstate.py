"""A warm pipeline put back as it was after a call that raised.

A diffusers call may change the pipeline it runs on and change it back only when it succeeds: SDXL
upcasts a `force_upcast` VAE to fp32 before decoding and casts it back after a decode that worked,
so an error in the decode leaves the VAE in fp32 and every later fp16 call fails with a dtype error;
offloading hooks leave a module on the device when its forward raised. So before each call the
dtype and device of every tensor of the pipeline's modules (and which object each component is) are
noted, and after an exception they are put back. Request options undo their own changes (adapters,
ControlNets, step caches) and the scheduler is set afresh for each call (so it is not noted). When putting back fails
the pipeline is unknown: `PipelineBroken` tells the runner to drop the model from the cache (the
next job loads it again) and to give the items back.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from workers import options as worker_options

log = logging.getLogger(__name__)


class PipelineBroken(RuntimeError):
    """A failed call changed the warm pipeline and it could not be put back: the model must be reloaded."""

    def __init__(self, model_id: str, why: str) -> None:
        super().__init__(f"model {model_id}: the pipeline could not be restored after a failed call ({why}); "
                         "it is dropped and loaded again")
        self.model_id = model_id


FRESH_EACH_CALL = ("scheduler",)
"""Components the call sets afresh before each call: neither noted nor put back."""

Noted = tuple[str, torch.nn.Module, str, str, torch.dtype, torch.device]
"""Where one tensor was: its component, its module, `_parameters` or `_buffers`, its name there, its dtype
and device (a plain tuple: a call notes a few thousand)."""


@dataclass
class WarmState:
    """The components of a pipeline and the dtype and device of each of their tensors, before a call."""

    components: dict[str, Any]
    tensors: list[Noted]
    read: dict[str, Any] = field(default_factory=dict)
    """Values read off the pipeline while it was as noted (`known`), e.g. its denoiser's dtype."""

    @classmethod
    def of(cls, pipe: Any) -> "WarmState":
        """The state of `pipe` now. Noting every tensor takes 2-4 ms for `builtin:tiny-sdxl`'s 543 (a busy
        2-core VM; a full-size pipeline has a few times as many), as much as a short item's queue overhead:
        so it is noted again only when `outline(pipe)` changed since the last note (a component swapped,
        moved or cast as a whole, or its adapters changed); a call that raised is put back to the note,
        so the note stays true."""
        outline = cls.outline(pipe)
        noted = _NOTED.get(pipe)
        if noted is not None and noted[0] == outline:
            return noted[1]
        state = cls.note(pipe)
        _NOTED[pipe] = (outline, state)
        return state

    @staticmethod
    def outline(pipe: Any) -> tuple:
        """What changes when a pipeline is reconfigured between calls, cheap to read: each component's
        identity, the dtype and device of its first tensor, and its adapters' names."""
        out = []
        for key, component in getattr(pipe, "components", {}).items():
            if key in FRESH_EACH_CALL:
                continue
            first = next(iter(component.parameters()), None) if isinstance(component, torch.nn.Module) else None
            adapters = tuple(getattr(component, "peft_config", None) or ())
            out.append((key, id(component), None if first is None else (first.dtype, first.device), adapters))
        return tuple(out)

    @classmethod
    def note(cls, pipe: Any) -> "WarmState":
        """Note the dtype and device of every tensor of `pipe` now."""
        components = {k: v for k, v in getattr(pipe, "components", {}).items() if k not in FRESH_EACH_CALL}
        tensors: list[Noted] = []
        for key, component in components.items():
            if isinstance(component, torch.nn.Module):  # a module shared by two components is noted twice
                for module in component.modules():
                    for kind in ("_parameters", "_buffers"):
                        tensors += [(key, module, kind, name, t.dtype, t.device)
                                    for name, t in getattr(module, kind).items() if t is not None]
        return cls(components, tensors)

    def known(self, what: str, read: Callable[[], Any]) -> Any:
        """`read()`, read once while the pipeline stays as noted: a value that follows from its outline, such
        as the denoiser's dtype (diffusers' `dtype` walks every submodule: ~0.4 ms per read for tiny-sd)."""
        if what not in self.read:
            self.read[what] = read()
        return self.read[what]

    def restore(self, pipe: Any) -> list[str]:
        """Put every component and tensor back as noted; returns what was changed (empty: nothing was).
        Raises whatever moving a tensor raises (the caller drops the pipeline then)."""
        changed = []
        for name, component in self.components.items():
            if getattr(pipe, name, None) is not component:
                setattr(pipe, name, component)
                changed.append(name)
        moved: dict[str, int] = {}
        with torch.no_grad():
            for component, module, kind, name, dtype, device in self.tensors:
                table = getattr(module, kind)
                now = table.get(name)
                if now is None or (now.dtype == dtype and now.device == device):
                    continue
                if kind == "_parameters":
                    now.data = now.data.to(device=device, dtype=dtype)
                else:
                    table[name] = now.to(device=device, dtype=dtype)
                what = f"{component} to {dtype}/{device}"
                moved[what] = moved.get(what, 0) + 1
        return changed + [f"{what} ({n} tensors)" for what, n in moved.items()]


_NOTED: "weakref.WeakKeyDictionary[Any, tuple[tuple, WarmState]]" = weakref.WeakKeyDictionary()
"""Pipeline -> (its outline, its state) when last noted."""


def restore_after_error(state: WarmState, pipe: Any, model_id: str, exc: BaseException) -> None:
    """After `exc` left a call: put `pipe` back as `state` noted it; `PipelineBroken` if that fails."""
    try:
        changed = state.restore(pipe)
    except Exception as err:  # noqa: BLE001 - whatever moving a tensor raises: the pipeline is unknown now
        log.error("model %s: could not restore the pipeline after %s: %s", model_id, type(exc).__name__, err,
                  exc_info=True)
        raise PipelineBroken(model_id, f"{type(err).__name__}: {err}") from exc
    if changed:
        log.warning("model %s: the failed call (%s) had changed the pipeline; restored: %s", model_id,
                    type(exc).__name__, "; ".join(changed))


def undo_or_drop(cache: Any, pipe: Any, loaded: Any, params: dict[str, Any], broken: bool) -> None:
    """The request options' changes undone after a chunk; the model dropped from `cache` (loaded again by
    the next job) when its pipeline is `broken` or undoing them raised."""
    try:
        worker_options.undo(cache, pipe, loaded, params)
    except Exception:
        broken = True
        raise
    finally:
        if broken:
            log.warning("model %s: dropped from the cache, the next job loads it again", loaded.model_id)
            cache.evict(loaded.model_id)
