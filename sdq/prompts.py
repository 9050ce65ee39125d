"""Prompt list files: .txt, JSON list, JSONL and CSV, into submit items."""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from sdq.exceptions import PromptFileError
from sdq.pipelines import all_images, all_params


def flag(value: Any) -> bool:
    """A yes/no cell: JSON true/false, or true/false/yes/no/1/0 as text (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise ValueError(value)


ITEM_FIELDS = {"prompt": str, "negative_prompt": str, "seed": int, "steps": int, "width": int, "height": int,
               "guidance_scale": float, "scheduler": str, "cache": flag,
               **{name: str for name in all_images()}, **{p.name: p.kind for p in all_params().values()}}
"""Per-item columns/keys a prompt file may carry, and their types."""


def _item(obj: Any, where: str) -> dict[str, Any]:
    if isinstance(obj, str):
        obj = {"prompt": obj}
    if not isinstance(obj, dict):
        raise PromptFileError(f"{where}: expected a prompt string or an object, got {type(obj).__name__}")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key not in ITEM_FIELDS:
            raise PromptFileError(f"{where}: unknown field {key!r}; known: {', '.join(ITEM_FIELDS)}")
        if value is None or value == "":
            continue
        try:
            out[key] = ITEM_FIELDS[key](value)
            if isinstance(out[key], float) and not math.isfinite(out[key]):
                raise ValueError(value)
        except (TypeError, ValueError, OverflowError):
            raise PromptFileError(f"{where}: {key}={value!r} is not a valid {ITEM_FIELDS[key].__name__}") from None
    if not str(out.get("prompt", "")).strip():
        raise PromptFileError(f"{where}: missing prompt")
    return out


def _loads(text: str) -> Any:
    """JSON with numbers that fit a float (1e400 and NaN are errors, not infinities)."""
    def finite(raw: str) -> float:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(f"number {raw[:40]} is out of range")
        return value

    try:
        return json.loads(text, parse_float=finite, parse_constant=lambda c: finite(c))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def parse_prompts(text: str, name: str = "-") -> list[dict[str, Any]]:
    """Items from a prompt file; the format follows the extension, else the content."""
    try:
        return _parse(text, name)
    except csv.Error as exc:
        raise PromptFileError(f"{name}: not a readable CSV file ({exc})") from None


def _parse(text: str, name: str) -> list[dict[str, Any]]:
    lower = name.lower()
    stripped = text.lstrip()
    if lower.endswith(".csv"):
        rows = csv.DictReader(io.StringIO(text))
        if not rows.fieldnames or "prompt" not in rows.fieldnames:
            raise PromptFileError(f"{name}: a CSV prompt file needs a header with a 'prompt' column")
        return [_item({k: v for k, v in row.items() if k}, f"{name}:{i + 2}") for i, row in enumerate(rows)]
    if lower.endswith(".jsonl") or (not lower.endswith((".json", ".txt")) and stripped.startswith("{")):
        items = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    obj = _loads(line)
                except ValueError as exc:
                    raise PromptFileError(f"{name}:{i + 1}: not JSON ({getattr(exc, 'msg', exc)})") from None
                items.append(_item(obj, f"{name}:{i + 1}"))
        return items
    if lower.endswith(".json") or stripped.startswith("["):
        try:
            data = _loads(text)
        except ValueError as exc:
            raise PromptFileError(f"{name}: not JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(data, list):
            raise PromptFileError(f"{name}: a JSON prompt file must be a list")
        return [_item(obj, f"{name}[{i}]") for i, obj in enumerate(data)]
    items = []
    for i, line in enumerate(text.splitlines()):
        line = line.strip()
        if line and not line.startswith("#"):
            items.append({"prompt": line})
    return items
