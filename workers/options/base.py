"""What a request option does on the worker: `OptionHook`, the base class of every option's worker hook.

The option's row (`sdq.options`) says what the option is; its hook here says how the worker runs it
on the warm pipeline: a pipeline variant to build (`derive`), what to switch on before a chunk's calls
(`apply`) and off after them, also after an exception (`undo`), the images and keywords it adds to each
call, and further passes after a call (`after_call`). Every method has a do-nothing default.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sdq import pipelines

Fit = Callable[[list[Any], int, int], list[Any]]
"""Images resized to a call's width x height."""


@dataclass
class CallContext:
    """One call of a micro-batch, for hooks that add passes after it: the cache and model, the task
    and the item's parameters, the batch's prompts, seeds and input images, the step callback, and
    `run(pipe, loaded, task, params, prompts, negative_prompts, seeds, images, callback)`, the
    worker's pipeline call (`workers.running.generation.run`)."""

    cache: Any
    loaded: Any
    task: str
    params: dict[str, Any]
    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    images: dict[str, list[Any]] | None
    callback: Callable | None
    run: Callable[..., Any]


@dataclass
class StepContext:
    """One pipeline call as a per-step hook sees it: the job, the item index of each of the call's images (in
    batch order), the pipeline, the item's parameters and the denoising steps of the call."""

    job: str
    rows: list[int]
    pipe: Any
    params: dict[str, Any]
    steps: int


StepFunction = Callable[[int, dict], None]
"""Called after each denoising step with the step (0-based) and the pipeline's step tensors (`latents` ...)."""


class OptionHook:
    """The worker side of one request option (`name`: its key in `params`)."""

    name: str = ""

    def setup(self, parts: Any) -> None:
        """Take what the hook needs of the worker once, at its start (`workers.app.WorkerParts`)."""

    def stepper(self, ctx: StepContext, value: Any) -> StepFunction | None:
        """A function run after each denoising step of one call (None: the option needs none)."""
        return None

    def derive(self, cache: Any, entry: Any, task: str, variant: str) -> Any:
        """The pipeline variant `variant` of `task` over the model's modules (when the row's `variant`
        names one)."""
        raise NotImplementedError(f"option {self.name!r} builds no pipeline variant")

    def apply(self, cache: Any, pipe: Any, entry: Any, value: Any) -> Any:
        """Switch the option on for a chunk's calls; returns what its infotext needs (None: nothing)."""
        return None

    def undo(self, cache: Any, pipe: Any, entry: Any, value: Any) -> None:
        """Switch it off again after the chunk's calls (also after an exception)."""

    def images(self, value: Any, load: Callable[[str, str], Any], n: int) -> dict[str, list[Any]]:
        """Images each call needs beside the pipeline's inputs (`load(key, mode)` reads an upload), `n` per batch."""
        return {}

    def call_kwargs(self, spec: pipelines.PipelineSpec, params: dict[str, Any], value: Any,
                    images: dict[str, list[Any]] | None, fit: Fit) -> dict[str, Any]:
        """Keyword arguments it adds to a diffusers call."""
        return {}

    def after_call(self, ctx: CallContext, value: Any, call: Any) -> Any:
        """The call's result after further passes (unchanged by default)."""
        return call

    def warm(self, entry: Any) -> list[str]:
        """Weights it holds loaded in the model `entry` now (published for routing affinity)."""
        return []

    def held_gb(self, entry: Any) -> float:
        """GiB of weights of its own it holds loaded beside the model `entry` (e.g. ControlNets)."""
        return 0.0
