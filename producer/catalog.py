"""The model catalog behind `GET /v1/models`: every model a caller may name, and what it takes.

One entry per model id the server allows (the built-ins, then the `SDQ_MODELS` allowlist, pushed
`store:` models included), with what the producer can tell without loading it: its kind of source,
its family (None where only a worker can read it: hub ids and pushed models), the pipelines it
runs, the request options it takes (LoRA adapters, ControlNet, the hires fix), its default size,
steps, scheduler and guidance, and which live workers may load it and which hold it warm now.
Allowlisted LoRA adapters and ControlNets are not models: they are listed under the options of the
models of their family. The doors' model lists (`/openai/v1/models`, `/sdapi/v1/sd-models`) are views
of this catalog.
"""
from __future__ import annotations

from typing import Any

from sdq import defaults, pipelines
from sdq.families import Family, UnknownFamily, model_info
from sdq.loras import adapter_family, allowed_adapters
from sdq.models import BUILTIN_CONTROLNETS, BUILTIN_MODELS, allowed_models
from sdq.sources import source_for


def _family(model: str) -> tuple[Family | None, int | None, str | None]:
    """(family, default side, why unknown) of `model` as the producer can read it."""
    try:
        info = model_info(model)
    except UnknownFamily as exc:
        return None, None, str(exc)
    return info.family, info.default_side, None


def _pipelines(model: str, fam: Family | None) -> list[str]:
    """Pipelines `model` runs: its family's rows of the pipeline table (all of them when not known here)."""
    if model in BUILTIN_MODELS:
        return list(BUILTIN_MODELS[model])
    return list(pipelines.pipelines_for(fam.name)) if fam else list(pipelines.PIPELINES)


def pipelines_of(model: str) -> list[str]:
    """The pipelines `model` runs, as far as the producer can tell (every pipeline when its family is not known here)."""
    return _pipelines(model, _family(model)[0])


def _options(fam: Family | None, runs: list[str], loras: list[str], controlnets: list[str]) -> dict[str, Any]:
    """The request options the model takes, each with the pipelines that take it and the ids it may name."""
    specs = [pipelines.spec(p) for p in runs]
    name = fam.name if fam else None
    out: dict[str, Any] = {}
    lora_pipes = [s.name for s in specs if s.takes_adapters(pipelines.LORAS.name)]
    if lora_pipes:
        out["loras"] = {"pipelines": lora_pipes, "ids": loras}
    cn_pipes = [s.name for s in specs if s.controlnet and (name is None or s.class_for(name, controlnet=True))]
    if cn_pipes and controlnets:
        out["controlnet"] = {"pipelines": cn_pipes, "ids": controlnets}
    hires = [s.name for s in specs if s.hires_pass]
    if hires:
        out["hires"] = {"pipelines": hires}
    return out


def _adapters(allowlist: tuple[str, ...]) -> dict[str, str]:
    """Allowed LoRA adapters the producer can recognise -> their family: the built-ins and local LoRA files
    (a pushed `store:` entry cannot be told from a model here: it is listed as a model)."""
    out: dict[str, str] = {}
    for adapter in allowed_adapters(allowlist):
        try:
            found = adapter_family(adapter)
        except ValueError:  # a local .safetensors file that is a checkpoint, not an adapter
            continue
        if found is not None:
            out[adapter] = found
    return out


def _same(family: str | None, other: str | None) -> bool:
    return family is None or other is None or family == other


def _workers(model: str, workers: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(live workers that may load `model`, those that hold it loaded now)."""
    able = [w["name"] for w in workers if model in (w.get("models") or ())]
    warm = [w["name"] for w in workers if model in (w.get("loaded_models") or ())]
    return able, warm


def entry(model: str, adapters: dict[str, str], controlnets: dict[str, str | None],
          workers: list[dict[str, Any]]) -> dict[str, Any]:
    """The catalog entry of one model id."""
    fam, side, why = _family(model)
    runs = _pipelines(model, fam)
    name = fam.name if fam else None
    able, warm = _workers(model, workers)
    out: dict[str, Any] = {
        "id": model, "kind": source_for(model).kind, "family": name, "family_title": fam.title if fam else None,
        "pipelines": runs,
        "options": _options(fam, runs, [a for a, f in adapters.items() if _same(name, f)],
                            [c for c, f in controlnets.items() if _same(name, f)]),
        "defaults": {"width": side or defaults.WIDTH, "height": side or defaults.HEIGHT, "steps": defaults.STEPS,
                     "scheduler": fam.default_scheduler if fam else defaults.SCHEDULER,
                     "guidance_scale": fam.guidance[2] if fam else defaults.GUIDANCE_SCALE},
        "size_multiple": fam.size_multiple if fam else 8,
        "workers": able, "warm_on": warm,
    }
    if why:
        out["note"] = why
    return out


def catalog(allowlist: tuple[str, ...], workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every model a caller may name (built-ins first, then the allowlist), adapters and ControlNets left out."""
    adapters = _adapters(allowlist)
    controlnets: dict[str, str | None] = dict(BUILTIN_CONTROLNETS)
    controlnets.update({m: None for m in allowlist if _is_controlnet(m)})
    models = [m for m in allowed_models(allowlist) if m not in adapters and m not in controlnets]
    return [entry(m, adapters, controlnets, workers) for m in models]


def _is_controlnet(model: str) -> bool:
    """A local folder holding a single model's `config.json` of a ControlNet (not a pipeline)."""
    path = getattr(source_for(model), "path", None)
    return bool(path is not None and path.is_dir() and (path / "config.json").is_file()
                and not (path / "model_index.json").is_file())


def find(allowlist: tuple[str, ...], workers: list[dict[str, Any]], model: str) -> dict[str, Any] | None:
    """The catalog entry of `model`, or None when the caller may not name it."""
    return next((e for e in catalog(allowlist, workers) if e["id"] == model), None)
