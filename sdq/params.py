"""How a request parameter is declared: a number with its range (`Param`), an uploaded image
(`ImageInput`) or a string field of an option's object (`Text`). Torch-free: the pipeline and option
tables (`sdq.pipelines`, `sdq.options`) are written with them, the request schema (`producer.schemas`)
checks them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdq.exceptions import InvalidInput


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
class Text:
    """A string field of a request option's object (a model id, an upload key ...)."""

    name: str
    max_chars: int
    required: bool = False
    doc: str = ""


def check_denoising(steps: int, strength: float, field: str) -> None:
    """Refuse a pass that would run no denoising step (diffusers' img2img runs `int(steps * strength)`),
    naming `field`."""
    if int(steps * strength) < 1:
        raise InvalidInput(field, f"steps x strength = {steps} x {strength:g} gives 0 denoising steps; "
                           f"raise the strength to at least {1 / steps:.3g} or the steps", code="no_steps")
