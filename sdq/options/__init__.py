"""Request options as one table, beside the pipeline table (`sdq.pipelines`): one `OptionSpec` row per
job-wide option of `params` (`sdq.options.base`), each in its own module here, with its worker hook in
`workers.options`.

Every stage iterates `OPTIONS` and no other module names an option: the request schema
(`producer.schemas`), the producer's plan (`producer.planning.jobs`), the item's size, steps and work
(`final_size`, `loop_steps`, `work` below), the result-cache key (`workers.running.resultcache`), infotext
(`workers.running.infotext`, `sdq.infotext`), the router's warm-weights affinity (`workers.running.routing`), the
worker's generation (`workers.running.generation`) and the CLI (`cli.jobs`). Adding an option means a
module here, a hook in `workers.options`, and their tests (docs/DESIGN.md, "Adding a request option").
Torch-free.
"""
from __future__ import annotations

from typing import Any

from sdq import pipelines, videos
from sdq.options.base import CacheInputs, OptionSpec, Pass, Submit
from sdq.options.controlnet import ControlNet
from sdq.options.hires import Hires
from sdq.options.loras import Loras
from sdq.options.preview import Preview
from sdq.options.step_cache import StepCache

OPTIONS: dict[str, OptionSpec] = {o.name: o for o in (Loras(), Hires(), ControlNet(), Preview(), StepCache())}
"""Every request option, by its key in `params`, in the order stages apply them."""

__all__ = ["OPTIONS", "CacheInputs", "OptionSpec", "Pass", "Submit", "active", "cache_inputs", "final_size",
           "from_infotext", "image_params", "infotext", "loop_steps", "passes", "pipeline_classes", "prompt", "variant", "warm_ids", "warm_label",
           "work"]


def active(params: dict[str, Any]) -> list[tuple[OptionSpec, Any]]:
    """The options an item's `params` carry, with their values, in table order."""
    return [(o, params[name]) for name, o in OPTIONS.items() if params.get(name)]


def image_params(params: dict[str, Any]) -> dict[str, Any]:
    """An item's parameters without the options that change nothing in its image (the result-cache key's)."""
    return {k: v for k, v in params.items() if k not in OPTIONS or OPTIONS[k].in_image}


def passes(pipeline: str, params: dict[str, Any]) -> list[Pass]:
    """Every denoising pass of an item: the pipeline's own, then the ones its options add."""
    spec = pipelines.spec(pipeline)
    out = [Pass(spec.first_loop(params), *spec.output_size(params["width"], params["height"]))]
    for option, _ in active(params):
        out += option.passes(params, out[-1].width, out[-1].height)
    return out


def final_size(pipeline: str, params: dict[str, Any]) -> tuple[int, int]:
    """Size of the image an item makes: its last pass's (its sizes alone: no step count is needed)."""
    width, height = pipelines.spec(pipeline).output_size(params["width"], params["height"])
    for option, _ in active(params):
        more = option.passes(params, width, height)
        if more:
            width, height = more[-1].width, more[-1].height
    return width, height


def loop_steps(pipeline: str, params: dict[str, Any]) -> int:
    """How many denoising steps an item really runs, over all its passes."""
    return sum(p.steps for p in passes(pipeline, params))


def work(pipeline: str, params: dict[str, Any]) -> float:
    """Work of one item in megapixel-steps: each pass's steps times its output megapixels (times its
    frames, for a video clip)."""
    return videos.frames_of(params) * sum(p.steps * p.width * p.height for p in passes(pipeline, params)) / 1e6


def pipeline_classes() -> set[str]:
    """Every diffusers pipeline class the pipelines and the options name (the worker imports them ahead)."""
    return pipelines.pipeline_classes() | {c for o in OPTIONS.values() for c in o.pipeline_classes()}


def variant(params: dict[str, Any]) -> str | None:
    """The pipeline variant an item runs (an option's id for it, e.g. its ControlNet), None: the pipeline itself."""
    return next((v for o in OPTIONS.values() if (v := o.variant(params)) is not None), None)


def warm_ids(params: dict[str, Any]) -> list[str]:
    """Weights a worker should hold loaded to run an item of `params` without a load (routing affinity)."""
    return [i for option, value in active(params) for i in option.warm_ids(value)]


def warm_label(params: dict[str, Any]) -> str:
    """The warm weights of `params` as messages name them (`LoRA a, b`)."""
    return " and ".join(f"{o.title} {', '.join(ids)}" for o, value in active(params) if (ids := o.warm_ids(value)))


def cache_inputs(params: dict[str, Any]) -> CacheInputs:
    """What the item's options add to its result-cache key, joined."""
    out = CacheInputs()
    for option, value in active(params):
        part = option.cache_inputs(value)
        out = CacheInputs({**out.images, **part.images}, {**out.weights, **part.weights}, out.adapters + part.adapters)
    return out


def infotext(params: dict[str, Any], applied: dict[str, Any] | None = None) -> dict[str, Any]:
    """The infotext fields of every option an item carries (`applied`: option name -> what its worker
    hook's `apply` returned)."""
    out: dict[str, Any] = {}
    for option, value in active(params):
        out.update(option.infotext(value, (applied or {}).get(option.name)))
    return out


def prompt(prompt: str, params: dict[str, Any]) -> str:
    """The prompt as infotext writes it (options may append to it, e.g. LoRA tags)."""
    for option, value in active(params):
        prompt = option.prompt(prompt, value)
    return prompt


def from_infotext(info: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The prompt and every option's value read back from parsed infotext."""
    text = str(info.get("prompt", ""))
    values: dict[str, Any] = {}
    for name, option in OPTIONS.items():
        value = option.from_infotext(info)
        if value is not None:
            values[name] = value
            text = option.prompt_from_infotext({**info, "prompt": text})
    return text, values
