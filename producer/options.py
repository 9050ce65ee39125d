"""The request options of a submit (`sdq.options`) checked against the pipeline and the model, and added
to each item. Generic: every option is a row of the table; this module names none of them.

All options are job-wide. An option whose `image_field` names an upload gives the item's size like an
init image (when the request gives no width/height) and must match an init image's size where the
pipeline has one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdq import options
from sdq.exceptions import InvalidInput


@dataclass
class Checked:
    """The job's checked options (name -> value, only the ones asked for) and the upload records that give
    an item's size (option name -> record)."""

    values: dict[str, Any] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def apply(self, params: dict[str, Any], size_multiple: int = 8) -> dict[str, Any]:
        """An item's parameters with every option added (each may refuse the item's size, naming its field)."""
        for name, value in self.values.items():
            params = options.OPTIONS[name].add(params, value, size_multiple)
        return params

    def check_size(self, init: dict[str, Any] | None, where: str) -> dict[str, Any] | None:
        """The upload record the item takes its size from; an option's image must match an init image."""
        for name, record in self.records.items():
            if init is None:
                return record
            if (record["width"], record["height"]) != (init["width"], init["height"]):
                what = options.OPTIONS[name].image_field
                raise InvalidInput(what, f"{what} is {record['width']}x{record['height']} but {where}init_image is "
                                   f"{init['width']}x{init['height']}: they must be the same size",
                                   code="size_mismatch")
        return init


def check_options(given: dict[str, Any], ctx: options.Submit) -> Checked:
    """Every option `given` names, checked in table order by its row; InvalidInput naming the field."""
    out = Checked()
    for name, option in options.OPTIONS.items():
        value = option.check(given.get(name), ctx)
        if value:
            out.values[name] = value
            record = option.image_record(value, ctx)
            if record is not None:
                out.records[name] = record
    return out
