"""Parameter sweeps: `{"guidance_scale": [5, 7.5], "scheduler": ["ddim", "euler"]}` into combinations.

A job with a sweep has one item per (prompt, combination, sample). Combinations are in product
order with the last key varying fastest. Cells of one prompt that differ only in swept values share
a seed (unless `seed` itself is swept), so the images compare settings, not noise.
"""
from __future__ import annotations

import itertools
import json
import math
from typing import Any

from pydantic import ValidationError

from producer.schemas import ITEM_PARAM_KEYS, PROMPT_MAX_CHARS, SEED_MAX, SWEEP_MAX_VALUES, Overrides
from sdq import options
from sdq.exceptions import InvalidInput

SWEEP_KEYS = (*ITEM_PARAM_KEYS, "seed", "negative_prompt")
"""Keys a sweep may vary."""


def _check_value(key: str, value: Any) -> Any:
    field = f"sweep.{key}"
    if isinstance(value, (list, dict)) or value is None:
        raise InvalidInput(field, f"{field}: values must be scalars, got {value!r}")
    if key == "seed":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
            raise InvalidInput(field, f"{field}: a seed must be an integer between 0 and {SEED_MAX}, got {value!r}")
        return value
    if key == "negative_prompt":
        if not isinstance(value, str) or len(value) > PROMPT_MAX_CHARS:
            raise InvalidInput(field, f"{field}: a negative prompt must be a string of at most "
                               f"{PROMPT_MAX_CHARS} characters, got {value!r}")
        return value
    if isinstance(value, bool):
        raise InvalidInput(field, f"{field}: {value!r} is not a valid {key}")
    try:
        return getattr(Overrides.model_validate({key: value}), key)
    except ValidationError as exc:
        msg = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise InvalidInput(field, f"{field}: {msg} (got {value!r})") from None


def check_sweep(sweep: dict[str, list[Any]] | None) -> dict[str, list[Any]]:
    """The sweep with validated, normalized values; {} for none. Errors name `sweep.<key>`."""
    out: dict[str, list[Any]] = {}
    for key, values in (sweep or {}).items():
        field = f"sweep.{key}"
        if key not in SWEEP_KEYS:
            raise InvalidInput(field, f"cannot sweep {key!r}; sweepable keys: {', '.join(SWEEP_KEYS)}")
        if not isinstance(values, list) or not values:
            raise InvalidInput(field, f"{field} must be a non-empty list of values, got {values!r}")
        if len(values) > SWEEP_MAX_VALUES:
            raise InvalidInput(field, f"{field} has {len(values)} values; at most {SWEEP_MAX_VALUES}")
        checked = [_check_value(key, v) for v in values]
        if len({json.dumps(v) for v in checked}) != len(checked):
            raise InvalidInput(field, f"{field} lists a value twice: {values!r}")
        out[key] = checked
    return out


def count(sweep: dict[str, list[Any]]) -> int:
    """How many combinations `sweep` has (1 without a sweep), computed without expanding them."""
    return math.prod(len(values) for values in sweep.values())


def combinations(sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the sweep's values, last key fastest; [{}] without a sweep."""
    if not sweep:
        return [{}]
    keys = list(sweep)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def check_cell(cell: dict[str, Any], combo: dict[str, Any], before: dict[str, Any], size_multiple: int = 8) -> None:
    """A cell against its request options' own rules, which its swept values may break (the hires fix's larger
    size must be a multiple of the family's `size_multiple` too): a 422 naming the swept key that breaks it.
    `before` is the cell's item without the sweep."""
    for option, value in options.active(cell):
        try:
            option.add(cell, value, size_multiple)
        except InvalidInput as exc:
            key = next((k for k in combo
                        if k in cell and _breaks(option, value, {**before, k: cell[k]}, size_multiple)), None)
            if key is None:  # no swept value breaks it alone: the option's own field
                raise
            raise InvalidInput(f"sweep.{key}", f"sweep.{key}={combo[key]!r}: {exc.message}", code=exc.code) from None


def _breaks(option: options.OptionSpec, value: Any, params: dict[str, Any], size_multiple: int) -> bool:
    """Whether `params` (one swept value over the item's own) breaks the option's rules."""
    try:
        option.add(params, value, size_multiple)
    except InvalidInput:
        return True
    return False
