"""How a request parameter is declared: a number with its range (`Param`), an uploaded image
(`ImageInput`) or a list of adapters (`AdapterParam`). Torch-free: the pipeline table
(`sdq.pipelines`) is written with them, the request schema (`producer.schemas`) checks them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    """A pipeline-specific item parameter: its type, range (checked at submit by the request schema,
    `producer.schemas`), default and how infotext labels it."""

    name: str
    kind: type
    low: float
    high: float
    default: Any
    infotext: str | None = None
    """A1111 infotext label the value is written under (None: not written)."""
    doc: str = ""

    def parse(self, text: str) -> Any:
        """The value read back from infotext."""
        return self.kind(float(text)) if self.kind is int else self.kind(text)


@dataclass(frozen=True)
class ImageInput:
    """An uploaded image a pipeline takes: the request field naming its upload key and the
    keyword the diffusers call receives it under."""

    field: str
    kwarg: str
    mode: str = "RGB"
    """PIL mode the worker converts the upload to before the call (`L`: single channel)."""
    infotext: str | None = None
    """A1111 infotext label its upload key is written under."""
    same_size_as: str | None = None
    """Another image field this one must match in size (checked at submit)."""
    sets_size: bool = False
    """Its size is the item's width/height unless the request gives them (the worker resizes to it)."""


@dataclass(frozen=True)
class AdapterParam:
    """A list parameter naming adapters (weights added to the model's own for one job, e.g. LoRA):
    each entry a `{"name", "scale"}` whose name is allowed like a model id; checked at submit by the
    request schema and `sdq.loras`, loaded by the worker (`workers.adapters`)."""

    name: str
    max_items: int
    scale_max: float
    """Largest absolute scale (negative scales are allowed)."""
    default_scale: float
    infotext: str | None = None
    """A1111 infotext label of the adapters' short hashes."""
    doc: str = ""
