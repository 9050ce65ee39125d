"""Submit bodies other than JSON: a prompt file as the body, job settings in the query string.

``POST /v1/jobs?steps=20&width=256&model=builtin:tiny-sd`` with one of

- ``Content-Type: text/plain`` — one prompt per line (blank lines and ``#`` comments skipped);
- ``Content-Type: text/csv`` — a header row with ``prompt`` and per-item columns;
- ``Content-Type: application/x-ndjson`` (or ``application/jsonl``) — one JSON object per line.

Query arguments: ``model``, ``pipeline``, ``priority``, ``webhook_url``, ``device``, ``dtype``,
``min_memory_gb`` and every field of ``params`` (``steps``, ``seed``, ``negative_prompt``,
``images_per_prompt``, ``grid`` ...). Unknown arguments are refused (422 naming them).
"""
from __future__ import annotations

from typing import Any

from producer.bodies import CONTENT_TYPES
from producer.schemas import Params
from sdq.exceptions import InvalidInput, PromptFileError
from sdq.prompts import parse_prompts

TOP_LEVEL = ("model", "pipeline", "priority", "webhook_url")
REQUIRES = ("device", "dtype", "min_memory_gb")


def body_from_prompt_file(text: str, mimetype: str, args: dict[str, str]) -> dict[str, Any]:
    """The JSON submit body equivalent to a prompt-file body and its query arguments."""
    try:
        items = parse_prompts(text, CONTENT_TYPES[mimetype])
    except PromptFileError as exc:
        raise InvalidInput("body", str(exc), code="invalid_prompt_file") from None
    body: dict[str, Any] = {}
    if all(set(it) == {"prompt"} for it in items):
        body["prompts"] = [it["prompt"] for it in items]
    else:
        body["items"] = items
    params: dict[str, Any] = {}
    requires: dict[str, Any] = {}
    for key, value in args.items():
        if key in TOP_LEVEL:
            body[key] = value
        elif key in REQUIRES:
            requires[key] = value
        elif key in Params.model_fields:
            params[key] = value
        else:
            raise InvalidInput(key, f"unknown query argument {key!r}; use job fields ({', '.join(TOP_LEVEL)}), "
                               f"requirements ({', '.join(REQUIRES)}) or params fields")
    if params:
        body["params"] = params
    if requires:
        body["requires"] = requires
    return body
