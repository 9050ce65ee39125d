"""Prompt list files: .txt, JSON list, JSONL and CSV, into submit items."""
from __future__ import annotations

import csv
import io
import json
from typing import Any

ITEM_FIELDS = {"prompt": str, "negative_prompt": str, "seed": int, "init_image": str, "steps": int,
               "width": int, "height": int, "guidance_scale": float, "scheduler": str, "strength": float,
               "noise_level": int}
"""Per-item columns/keys a prompt file may carry, and their types."""


class PromptFileError(ValueError):
    """A prompt file that cannot be read; the message names the line."""


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
        except (TypeError, ValueError):
            raise PromptFileError(f"{where}: {key}={value!r} is not a valid {ITEM_FIELDS[key].__name__}") from None
    if not str(out.get("prompt", "")).strip():
        raise PromptFileError(f"{where}: missing prompt")
    return out


def parse_prompts(text: str, name: str = "-") -> list[dict[str, Any]]:
    """Items from a prompt file; the format follows the extension, else the content."""
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
                    items.append(_item(json.loads(line), f"{name}:{i + 1}"))
                except json.JSONDecodeError as exc:
                    raise PromptFileError(f"{name}:{i + 1}: not JSON ({exc.msg})") from None
        return items
    if lower.endswith(".json") or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{name}: not JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, list):
            raise PromptFileError(f"{name}: a JSON prompt file must be a list")
        return [_item(obj, f"{name}[{i}]") for i, obj in enumerate(data)]
    items = []
    for i, line in enumerate(text.splitlines()):
        line = line.strip()
        if line and not line.startswith("#"):
            items.append({"prompt": line})
    return items
