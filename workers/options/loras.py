"""The worker hook of `params.loras` (`sdq.options.loras`): LoRA adapters on a loaded model (diffusers'
peft backend), each loaded once and switched per chunk.

A chunk with `params.loras` activates exactly its adapters at its scales (`set_adapters`); after its
calls (also after an exception) every adapter is turned off again (`disable_lora`: the base weights
alone, bit for bit). Adapters stay loaded after their job, at most `defaults.WARM_ADAPTERS` per model (least
recently used deleted first), so a run of jobs with the same adapter loads it once. The capability
record lists them. On a compiled worker (`--cpu-path compile`) adapters are hot-swapped into fixed slots
instead (`HotswapAdapters`): a new adapter replaces the weights in place and the compiled blocks run on
without recompiling.
"""
from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdq import defaults, loras as sdq_loras
from sdq.exceptions import ModelError
from sdq.sources import Fetcher, source_for
from workers.options.base import OptionHook

log = logging.getLogger(__name__)

FIELD = f"params.{sdq_loras.FIELD}"
"""How errors name the request field."""

HOTSWAP_RANK = 128
"""The rank bound of a compiled model's adapters (`enable_lora_hotswap(target_rank=...)`, diffusers' default):
adapters of rank up to it swap in without a recompile."""


@dataclass(frozen=True)
class Adapter:
    """One adapter loaded into a model: its id, its peft adapter name, its file's digests."""

    id: str
    adapter_name: str
    sha256: str
    a1111_hash: str


def adapter_file(adapter_id: str, fetcher: Fetcher) -> Path:
    """The local `.safetensors` file of an adapter (built, pulled or found first); ModelError otherwise."""
    path = source_for(adapter_id).open(fetcher)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise ModelError(f"{FIELD}: {adapter_id!r} is a folder with {len(files)} .safetensors files; "
                             "an adapter is one .safetensors file")
        path = files[0]
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"{FIELD}: {adapter_id!r} is {path.name}; LoRA adapters load from .safetensors files only")
    return path


def adapter_digest(adapter_id: str, fetcher: Fetcher) -> str:
    """SHA-256 of the adapter's file (for the result-cache key)."""
    return fetcher.file_sha256(adapter_file(adapter_id, fetcher))


def _peft_name(adapter_id: str, sha256: str) -> str:
    """A peft adapter name (no dots) unique to the id and its contents."""
    return "lora_" + hashlib.sha256(f"{adapter_id}\n{sha256}".encode()).hexdigest()[:16]


class WarmAdapters:
    """The adapters loaded into one model's pipelines, most recently used last."""

    def __init__(self, family: str, keep: int = defaults.WARM_ADAPTERS) -> None:
        self.family = family
        self.keep = max(1, keep)
        self.loaded: OrderedDict[str, Adapter] = OrderedDict()
        self.active = False

    def ids(self) -> list[str]:
        """Adapter ids loaded now, most recently used last."""
        return list(self.loaded)

    def use(self, pipe: Any, wanted: list[dict[str, Any]] | None, fetcher: Fetcher) -> dict[str, str]:
        """Make `pipe` (and every pipeline sharing its modules) run with exactly the `wanted` adapters
        at their scales, loading missing ones; returns their A1111 short hashes by id. ModelError
        (naming the field) for an adapter that cannot be had or does not fit the model."""
        if not wanted:
            if self.active:
                pipe.disable_lora()
                self.active = False
            return {}
        # 1. Load what is missing (or changed: a pushed name with new contents loads again).
        used = [self._ensure(pipe, lo["name"], fetcher) for lo in wanted]
        # 2. Room: delete the least recently used adapters beyond `keep` (never one this chunk uses).
        for adapter in used:
            self.loaded.move_to_end(adapter.id)
        names = {a.adapter_name for a in used}
        while len(self.loaded) > max(self.keep, len(used)):
            old = next(a for a in self.loaded.values() if a.adapter_name not in names)
            self._delete(pipe, old)
        # 3. Activate exactly these, at these scales.
        pipe.enable_lora()
        pipe.set_adapters([a.adapter_name for a in used], adapter_weights=[float(lo["scale"]) for lo in wanted])
        self.active = True
        return {a.id: a.a1111_hash for a in used}

    def _ensure(self, pipe: Any, adapter_id: str, fetcher: Fetcher) -> Adapter:
        """The loaded adapter `adapter_id`, loaded now if it is not (or its file changed)."""
        path = adapter_file(adapter_id, fetcher)
        sha = fetcher.file_sha256(path)
        have = self.loaded.get(adapter_id)
        if have is not None and have.sha256 == sha:
            return have
        if have is not None:
            self._delete(pipe, have)
        return self._load(pipe, adapter_id, path, sha)

    def _load(self, pipe: Any, adapter_id: str, path: Path, sha: str, name: str | None = None) -> Adapter:
        """Load one adapter file into `pipe`'s UNet (and text encoders) as peft adapter `name` (default: one
        of its id and contents); Kohya/A1111 files are converted by diffusers on the way."""
        from safetensors.torch import load_file

        self._check_family(adapter_id, path)
        adapter = Adapter(adapter_id, name or _peft_name(adapter_id, sha), sha, sdq_loras.a1111_hash(path))
        log.info("loading LoRA %s (%s) as %s", adapter_id, path, adapter.adapter_name)
        try:
            pipe.load_lora_weights(load_file(str(path)), adapter_name=adapter.adapter_name)
        except Exception as exc:  # noqa: BLE001 - whatever a mismatched file raises
            self._forget(pipe, adapter.adapter_name)
            raise ModelError(f"{FIELD}: LoRA {adapter_id!r} does not fit this model: {type(exc).__name__}: "
                             f"{str(exc)[:300]}") from exc
        if name is None:
            self.loaded[adapter_id] = adapter
        return adapter

    def _check_family(self, adapter_id: str, path: Path) -> None:
        """ModelError naming the field unless `path` is a LoRA adapter of this model's family."""
        try:
            family = sdq_loras.file_family(path)
        except ValueError as exc:
            raise ModelError(f"{FIELD}: {adapter_id!r} is not a LoRA adapter: {exc}") from None
        if family != self.family:
            raise ModelError(f"{FIELD}: LoRA {adapter_id!r} is for the {family} family; this model is {self.family}")

    def _delete(self, pipe: Any, adapter: Adapter) -> None:
        """Unload one adapter (its layers leave the modules)."""
        log.info("unloading LoRA %s (%s)", adapter.id, adapter.adapter_name)
        self.loaded.pop(adapter.id, None)
        self._forget(pipe, adapter.adapter_name)

    @staticmethod
    def _forget(pipe: Any, adapter_name: str) -> None:
        """Delete a (maybe half-)loaded adapter from the pipeline, quietly when it is not there."""
        try:
            if adapter_name in {n for names in pipe.get_list_adapters().values() for n in names}:
                pipe.delete_adapters(adapter_name)
        except Exception:  # noqa: BLE001 - best effort: nothing of it may have been loaded
            log.warning("could not delete adapter %s", adapter_name, exc_info=True)


class HotswapAdapters(WarmAdapters):
    """The adapters of a compiled model (`--cpu-path compile`): one peft adapter per position in a job's list
    (`slot_0`, `slot_1` ...), whose weights a later job's adapter replaces in place (`hotswap=True`) with
    ranks padded to `HOTSWAP_RANK` (`enable_lora_hotswap`, before the first load), so switching adapters
    does not recompile the compiled blocks. An adapter that cannot be swapped in (another rank bound or
    other target modules) is loaded afresh into its slot, which recompiles once (logged)."""

    def __init__(self, family: str, keep: int = defaults.WARM_ADAPTERS) -> None:
        super().__init__(family, keep)
        self.slots: list[Adapter] = []
        self.prepared = False

    def ids(self) -> list[str]:
        """Adapter ids loaded in the slots now."""
        return [a.id for a in self.slots]

    def use(self, pipe: Any, wanted: list[dict[str, Any]] | None, fetcher: Fetcher) -> dict[str, str]:
        """Put the `wanted` adapters into the first slots (swapping weights in place) and activate those."""
        if not wanted:
            if self.active:
                pipe.disable_lora()
                self.active = False
            return {}
        used = [self._slot(pipe, i, lo["name"], fetcher) for i, lo in enumerate(wanted)]
        pipe.enable_lora()
        pipe.set_adapters([f"slot_{i}" for i in range(len(used))],
                          adapter_weights=[float(lo["scale"]) for lo in wanted])
        _scales_as_tensors(pipe)
        self.active = True
        return {a.id: a.a1111_hash for a in used}

    def _slot(self, pipe: Any, i: int, adapter_id: str, fetcher: Fetcher) -> Adapter:
        """Slot `i` holding `adapter_id` (its weights swapped in when it held another)."""
        from safetensors.torch import load_file

        path = adapter_file(adapter_id, fetcher)
        sha = fetcher.file_sha256(path)
        name = f"slot_{i}"
        if i < len(self.slots) and self.slots[i].id == adapter_id and self.slots[i].sha256 == sha:
            return self.slots[i]
        adapter = Adapter(adapter_id, name, sha, sdq_loras.a1111_hash(path))
        if i < len(self.slots):
            self._check_family(adapter_id, path)
            try:
                log.info("hot-swapping LoRA %s into %s (no recompile)", adapter_id, name)
                pipe.load_lora_weights(load_file(str(path)), adapter_name=name, hotswap=True)
            except Exception as exc:  # noqa: BLE001 - another rank bound or other target modules
                log.warning("LoRA %s cannot be hot-swapped into %s (%s: %s): loading it afresh, which recompiles",
                            adapter_id, name, type(exc).__name__, str(exc)[:200])
                self._forget(pipe, name)
                self._load(pipe, adapter_id, path, sha, name)
            self.slots[i] = adapter
            return adapter
        if not self.prepared:  # before the first adapter is loaded, as diffusers requires
            pipe.enable_lora_hotswap(target_rank=HOTSWAP_RANK)
            self.prepared = True
        self._load(pipe, adapter_id, path, sha, name)
        self.slots.append(adapter)
        return adapter

def _scales_as_tensors(pipe: Any) -> None:
    """The LoRA layers' scales as tensors again (`set_adapters` writes floats, and a compiled block guards
    on a float's value: a new scale would recompile; a tensor's value is an input)."""
    import torch

    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module) or not getattr(component, "peft_config", None):
            continue
        for module in component.modules():
            scaling = getattr(module, "scaling", None)
            if isinstance(scaling, dict) and hasattr(module, "lora_A"):
                for key, value in scaling.items():
                    if isinstance(value, float):
                        scaling[key] = torch.tensor(value, device=module.lora_A[key].weight.device)


class LorasHook(OptionHook):
    """Loads the chunk's adapters into the model (kept warm) and switches exactly them on, then off."""

    name = sdq_loras.FIELD

    def apply(self, cache: Any, pipe: Any, entry: Any, value: Any) -> dict[str, str]:
        """Activate the adapters at their scales; returns their A1111 short hashes by id."""
        with cache.lock:
            warm = entry.parts.get(self.name)
            if warm is None:
                compiled = getattr(getattr(cache, "device", None), "backend", None) == "compile"
                kind = HotswapAdapters if compiled else WarmAdapters
                warm = entry.parts[self.name] = kind(entry.family, cache.warm_adapters)
            return warm.use(pipe, value, cache.fetcher)

    def undo(self, cache: Any, pipe: Any, entry: Any, value: Any) -> None:
        """Every adapter off (they stay loaded)."""
        with cache.lock:
            warm = entry.parts.get(self.name)
            if warm is not None:
                warm.use(pipe, None, cache.fetcher)

    def warm(self, entry: Any) -> list[str]:
        """The adapter ids loaded into the model."""
        warm = entry.parts.get(self.name)
        return warm.ids() if warm is not None else []
