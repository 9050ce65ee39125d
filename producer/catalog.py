"""The model catalog behind `GET /v1/models`: every model a caller may name, and what it takes.

One entry per model id the server allows (the built-ins, then the `SDQ_MODELS` allowlist, pushed
`store:` models included), with what the producer can tell without loading it: its kind of source,
its family (None where only a worker can read it: hub ids and pushed models), the pipelines it
runs, the request options it takes (the option table's rows, with the ids of an option's own weights), its default size,
steps, scheduler and guidance, and which live workers may load it and which hold it warm now.
The options' own weights (adapters and the like) are not models: they are listed under the options of
the models of their family. The doors' model lists (`/openai/v1/models`, `/sdapi/v1/sd-models`) are views
of this catalog.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from sdq import defaults, options, pipelines
from sdq.exceptions import SdqError
from sdq.families import FAMILIES, Family, UnknownFamily, from_class_name
from sdq.modelinfo import ONE_CLASS_FAMILIES, model_info
from sdq.models import BUILTIN_MODELS, allowed_models
from sdq.records import WorkerRecord
from sdq.sources import STORE_PREFIX, source_for
from storage import ResultStore
from storage.models import PREFIX, pushed_adapter_family, remote_manifest

log = logging.getLogger(__name__)

PUSHED_TTL = 60.0
"""Seconds a pushed model's description, read from the bucket, is kept by a producer process."""


class PushedModels:
    """What the bucket tells of pushed `store:` models: a LoRA adapter's family (its manifest), a diffusers
    folder's family (its `model_index.json`); read once per `ttl` seconds, None where it cannot be read."""

    def __init__(self, store: ResultStore, ttl: float = PUSHED_TTL) -> None:
        self.store, self.ttl = store, ttl
        self._seen: dict[str, tuple[float, str | None, bool]] = {}

    def describe(self, model: str) -> tuple[str | None, bool]:
        """(family name or None, whether it is a LoRA adapter) of pushed model `model` (`store:NAME`)."""
        now = time.monotonic()
        seen = self._seen.get(model)
        if seen is None or now - seen[0] > self.ttl:
            seen = (now, *self._read(model.removeprefix(STORE_PREFIX)))
            self._seen[model] = seen
        return seen[1], seen[2]

    def _read(self, name: str) -> tuple[str | None, bool]:
        try:
            manifest = remote_manifest(self.store, name)
            is_adapter, family = pushed_adapter_family(manifest)
            if is_adapter:
                return family, True
            if manifest.get("kind") != "folder":
                return None, False
            index = json.loads(self.store.get(f"{PREFIX}{name}/files/model_index.json"))
            return from_class_name(str(index.get("_class_name", ""))), False
        except (SdqError, UnknownFamily, ValueError, KeyError) as exc:
            log.info("pushed model %s: %s", name, exc)
        except Exception as exc:  # noqa: BLE001 - botocore raises several kinds; the catalog says "not known"
            log.warning("pushed model %s cannot be read from the bucket: %s", name, exc)
        return None, False


def _family(model: str, pushed: PushedModels | None = None) -> tuple[Family | None, int | None, str | None]:
    """(family, default side, why unknown) of `model` as the producer can read it."""
    if pushed is not None and model.startswith(STORE_PREFIX):
        name = pushed.describe(model)[0]
        fam = FAMILIES.get(name or "")
        return fam, fam.default_side if fam else None, None
    try:
        info = model_info(model)
    except UnknownFamily as exc:
        return None, None, str(exc)
    return info.family, info.default_side, None


def _pipelines(model: str, fam: Family | None) -> list[str]:
    """Pipelines `model` runs: its family's rows of the pipeline table (all of them when not known here), or
    the one its weights are made for (a Wan T2V or I2V folder: `sdq.modelinfo.ONE_CLASS_FAMILIES`)."""
    if model in BUILTIN_MODELS:
        return list(BUILTIN_MODELS[model])
    if fam is not None and fam.name in ONE_CLASS_FAMILIES and not model.startswith(STORE_PREFIX):
        try:
            runs = model_info(model).pipelines
        except UnknownFamily:
            runs = None
        if runs:
            return list(runs)
    return list(pipelines.pipelines_for(fam.name)) if fam else list(pipelines.PIPELINES)


def pipelines_of(model: str, pushed: PushedModels | None = None) -> list[str]:
    """The pipelines `model` runs, as far as the producer can tell (every pipeline when its family is not known here)."""
    return _pipelines(model, _family(model, pushed)[0])


def _options(fam: Family | None, runs: list[str], weights: dict[str, dict[str, str | None]]) -> dict[str, Any]:
    """The request options the model takes (the option table's rows), each with the pipelines that take it and,
    for an option that names weights of its own, the ids a model of its family may name."""
    name = fam.name if fam else None
    out: dict[str, Any] = {}
    for key, option in options.OPTIONS.items():
        pipes = [p for p in runs if option.offered(p, name)]
        if not pipes:
            continue
        ids = [i for i, f in weights[key].items() if _same(name, f)]
        if option.names_weights and not ids:
            continue
        out[key] = {"pipelines": pipes, **({"ids": ids} if option.names_weights else {})}
    return out


def option_weights(allowlist: tuple[str, ...], pushed: PushedModels | None = None) -> dict[str, dict[str, str | None]]:
    """Option name -> the allowed weights it names (id -> family), which are not models of their own."""
    describe = pushed.describe if pushed is not None else None
    return {key: option.weights(allowlist, describe) for key, option in options.OPTIONS.items()}


def _same(family: str | None, other: str | None) -> bool:
    return family is None or other is None or family == other


def _workers(model: str, workers: list[WorkerRecord]) -> tuple[list[str], list[str]]:
    """(live workers that may load `model`, those that hold it loaded now)."""
    able = [w.name for w in workers if model in w.models]
    warm = [w.name for w in workers if model in w.loaded_models]
    return able, warm


def entry(model: str, weights: dict[str, dict[str, str | None]], workers: list[WorkerRecord],
          pushed: PushedModels | None = None) -> dict[str, Any]:
    """The catalog entry of one model id."""
    fam, side, why = _family(model, pushed)
    runs = _pipelines(model, fam)
    able, warm = _workers(model, workers)
    out: dict[str, Any] = {
        "id": model, "kind": source_for(model).kind, "family": fam.name if fam else None,
        "family_title": fam.title if fam else None, "pipelines": runs, "options": _options(fam, runs, weights),
        "defaults": {"width": side or defaults.WIDTH, "height": side or defaults.HEIGHT,
                     "steps": fam.default_steps if fam and fam.default_steps else defaults.STEPS,
                     "scheduler": fam.default_scheduler if fam else defaults.SCHEDULER,
                     "guidance_scale": fam.guidance[2] if fam else defaults.GUIDANCE_SCALE},
        "size_multiple": fam.size_multiple if fam else 8,
        "workers": able, "warm_on": warm,
    }
    if why:
        out["note"] = why
    return out


def catalog(allowlist: tuple[str, ...], workers: list[WorkerRecord],
            pushed: PushedModels | None = None) -> list[dict[str, Any]]:
    """Every model a caller may name (built-ins first, then the allowlist), the options' own weights left out;
    `pushed` reads pushed models' descriptions from the bucket."""
    weights = option_weights(allowlist, pushed)
    not_models = {i for ids in weights.values() for i in ids}
    return [entry(m, weights, workers, pushed) for m in allowed_models(allowlist) if m not in not_models]
