"""What a request option declares: `OptionSpec`, the base class of every row of the option table.

An option is one job-wide key of `params` (`params.loras`, `params.hires` ...) that changes how the
pipeline runs without being a pipeline of its own. Its row says, in one module, how the request
schema checks it, which pipelines and families take it, what it adds to an item, its part of the
result-cache key, its infotext fields (written and read back), the warm weights a worker should hold
for it, and its CLI flags. The torch side (apply it to the warm pipeline and undo it) is its worker
hook (`workers.options`). Torch-free.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sdq import pipelines
from sdq.exceptions import InvalidInput
from sdq.params import Param, Text


Describe = Callable[[str], tuple[str | None, bool]]
"""A pushed `store:` id's (family or None, whether it is an adapter), read from the bucket."""


@dataclass(frozen=True)
class Submit:
    """What an option's submit check may look at: the pipeline, the model and its family (None: not
    known here, the worker checks), the allowlist and the caller's uploads (`uploads(key, field)`
    returns an upload's record or raises InvalidInput naming `field`; None: not checked here)."""

    spec: pipelines.PipelineSpec
    model: str
    family: str | None
    allowlist: tuple[str, ...]
    uploads: Callable[[str, str], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Pass:
    """A further denoising pass an option adds after the pipeline's own (its steps and output size)."""

    steps: int
    width: int
    height: int


@dataclass(frozen=True)
class CacheInputs:
    """What an option adds to an item's result-cache key besides its parameters: uploads whose bytes
    count (`images`: key name -> upload key), weights whose digest counts (`weights`: key name ->
    model id) and adapter files whose digest counts (`adapters`: ids)."""

    images: dict[str, str] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    adapters: tuple[str, ...] = ()


@dataclass(frozen=True)
class FormField:
    """One input of an option's fieldset on the web page's submit form (`producer.form`): the field of
    the option's object it fills (`key`), its label, its kind (`number`, `text`, `file`: an upload, or
    `list`: entries typed as `A[:N], B`, the option's first string and number fields) and HTML attributes."""

    key: str
    label: str
    kind: str = "number"
    attrs: tuple[tuple[str, str], ...] = ()


class OptionSpec:
    """One request option (`params.<name>`). Subclasses set the class attributes and override the
    hooks they need; every hook has a do-nothing default, so an option declares only what it does."""

    name: str = ""
    """The key in `params` (and in an item's parameters)."""
    title: str = ""
    """How messages name it (`LoRA`, `ControlNet`, `hires fix`)."""
    doc: str = ""
    """The request schema's description."""
    fields: tuple[Param | Text, ...] = ()
    """Its object's fields: numbers with their ranges (`Param`) and strings (`Text`)."""
    schema_name: str = ""
    """The name of its object in the OpenAPI document."""
    many: int | None = None
    """A list of at most this many objects (None: one object)."""
    schema_defaults: bool = False
    """The schema fills the numbers' defaults (else they are None until `check`)."""
    flag: bool = False
    """The schema also takes `true` (the object with its defaults) and `false` (not asked for)."""
    in_image: bool = True
    """The option changes the image: its value is in the result-cache key (False: it only shows the work, e.g.
    previews, and an item with it is answered from the cache like one without)."""
    pipelines: tuple[str, ...] = ()
    """The pipelines that take it (`check` refuses it elsewhere)."""
    size_field: str | None = None
    """The field named when the size its passes make exceeds the server's limit."""
    image_field: str | None = None
    """The request field of an upload whose size gives the item's (or must match its init image)."""
    legend: str = ""
    """The web form's fieldset legend."""
    toggle: str = ""
    """The label of the web form's checkbox that asks for it ("" for a `list` field typed in)."""
    form: tuple[FormField, ...] = ()
    """The web form's inputs."""

    # -- submit (producer) ----------------------------------------------------------------------------
    def check(self, value: Any, ctx: Submit) -> Any:
        """The job's checked value (None or empty: not asked for); InvalidInput naming the field otherwise.
        By default: refused, with code `unsupported_<name>`, on a pipeline outside `pipelines`."""
        if value is not None and ctx.spec.name not in self.pipelines:
            raise InvalidInput(f"params.{self.name}", f"pipeline {ctx.spec.name!r} does not take {self.title}; "
                               f"these do: {', '.join(self.pipelines) or 'none'}", code=f"unsupported_{self.name}")
        return value

    def image_record(self, value: Any, ctx: Submit) -> dict[str, Any] | None:
        """The upload record of `image_field` (None: the option gives no size)."""
        return None

    def add(self, params: dict[str, Any], value: Any, size_multiple: int = 8) -> dict[str, Any]:
        """An item's parameters with the option's checked `value` added."""
        return {**params, self.name: value}

    # -- counting (both sides) ------------------------------------------------------------------------
    def passes(self, params: dict[str, Any], width: int, height: int) -> list[Pass]:
        """Further passes after a pass of `width` x `height` (none by default)."""
        return []

    def pipeline_classes(self) -> set[str]:
        """Diffusers classes the option runs pipelines as (imported by the worker ahead of use)."""
        return set()

    def variant(self, params: dict[str, Any]) -> str | None:
        """The id of the pipeline variant an item runs (None: the pipeline itself)."""
        return None

    # -- result cache, routing, infotext --------------------------------------------------------------
    def cache_inputs(self, value: Any) -> CacheInputs:
        """What the option adds to the result-cache key besides its value in the parameters."""
        return CacheInputs()

    def warm_ids(self, value: Any) -> list[str]:
        """Weights a worker should hold loaded to run it without a load (routing affinity)."""
        return []

    def prompt(self, prompt: str, value: Any) -> str:
        """The prompt as infotext writes it."""
        return prompt

    def infotext(self, value: Any, applied: Any = None) -> dict[str, Any]:
        """Infotext fields of `value` (`applied`: what the worker hook's `apply` returned)."""
        return {}

    def from_infotext(self, info: dict[str, Any]) -> Any:
        """The value read back from parsed infotext (None: not there)."""
        return None

    def prompt_from_infotext(self, info: dict[str, Any]) -> str:
        """The prompt of parsed infotext without what `prompt` added."""
        return str(info.get("prompt", ""))

    # -- the model catalog (`GET /v1/models`) -----------------------------------------------------------
    names_weights: bool = False
    """The option names weights of its own (adapters, ControlNets): the catalog lists the ids a model may use."""

    def offered(self, pipeline: str, family: str | None) -> bool:
        """Whether a model of `family` (None: not known here) takes the option on `pipeline`."""
        return pipeline in self.pipelines

    def weights(self, allowlist: tuple[str, ...], describe: Describe | None = None) -> dict[str, str | None]:
        """The allowed weights the option names, id -> the family they are for (None: not known here); they
        are not models of their own. `describe(id)` reads a pushed `store:` id's (family, is an adapter)."""
        return {}

    # -- command line ---------------------------------------------------------------------------------
    def model_rows(self, allowlist: tuple[str, ...], models_dir: Path, rows: dict[str, dict[str, Any]]) -> list[dict]:
        """`sdq models`: mark the listed `rows` (by id) that are weights the option names, and return rows
        for such weights that are not models (none by default)."""
        return []

    def row_note(self, row: dict[str, Any]) -> str:
        """`sdq models`: what a row's line says after its path about the option ("" by default)."""
        return ""

    def push_note(self, manifest: dict[str, Any]) -> str | None:
        """`sdq models push`: what a pushed file is when it is weights the option names (None: not)."""
        return None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Its `sdq submit` flags."""

    def from_args(self, args: argparse.Namespace, upload: Callable[[str, str], str]) -> Any:
        """The value the flags ask for (None: none); `upload(flag, path)` uploads a file and returns its key."""
        return None
