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

from producer.bodies import check_json_shape
from producer.schemas import Params
from sdq import defaults
from sdq.exceptions import InvalidInput, PromptFileError
from sdq.prompts import parse_prompts

CONTENT_TYPES = {
    "text/plain": "body.txt",
    "text/csv": "body.csv",
    "application/x-ndjson": "body.jsonl",
    "application/jsonl": "body.jsonl",
    "application/json-lines": "body.jsonl",
}
"""Accepted prompt-file media types and the file name whose format they select."""

TOP_LEVEL = ("model", "pipeline", "priority", "webhook_url")
REQUIRES = ("device", "dtype", "min_memory_gb")


def is_prompt_file(mimetype: str) -> bool:
    """Whether a request body of this media type is a prompt file."""
    return mimetype in CONTENT_TYPES


def check_prompt_file(data: bytes, mimetype: str, max_items: int) -> None:
    """Refuse, before parsing, a prompt file with more lines, CSV fields or JSON values than `max_items` allow."""
    lines = data.count(b"\n") + 1
    max_lines = max_items * defaults.PROMPT_FILE_LINES_PER_ITEM + defaults.JSON_VALUES_BASE
    if lines > max_lines:
        raise InvalidInput("body", f"the prompt file has {lines} lines; this server takes at most {max_lines}",
                           code="too_large", status=413)
    budget = max_items * defaults.JSON_VALUES_PER_ITEM + defaults.JSON_VALUES_BASE
    if CONTENT_TYPES[mimetype].endswith(".jsonl"):
        check_json_shape(data, budget)
    elif CONTENT_TYPES[mimetype].endswith(".csv") and data.count(b",") + lines > budget:
        raise InvalidInput("body", f"the CSV prompt file has more than {budget} fields", code="too_large", status=413)


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
