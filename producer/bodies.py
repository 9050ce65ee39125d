"""Reading request bodies within bounds: size per content type, JSON shape before parsing, strings.

A JSON body is scanned before `json.loads` builds a single object: everything but quotes,
brackets and commas is dropped (escaped quotes first), string contents are cut out between quote
pairs in 64 kB slices, then brackets and commas are counted. A body with more values than
`JSON_VALUES_PER_ITEM` per allowed item (plus `JSON_VALUES_BASE`), or nested deeper than
`MAX_JSON_DEPTH`, is refused unparsed, so the Python objects a request creates stay within a few
times its size and no parser recursion can overflow. A prompt file (`CONTENT_TYPES`; turned
into a submit body by `producer.planning.formats`) is bounded the same way by its lines, CSV fields and
JSON values before it is parsed. Every string that may reach Redis is then
checked: valid Unicode (no lone surrogates), no NUL or other C0 control characters but tab and
newline.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import Request, current_app

from sdq import defaults
from sdq.exceptions import InvalidInput

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{},')
_SLICE = 1 << 16
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


def limited(size: int):
    """Decorate a view with the largest body it takes (the doors' images), read by `body_limit`."""
    def mark(view):
        view.max_body_bytes = size
        return view
    return mark


def body_limit(request: Request) -> int:
    """The largest body this request may have, by endpoint and content type."""
    if request.endpoint == "api.upload":
        return defaults.MAX_UPLOAD_BODY_BYTES
    declared = getattr(current_app.view_functions.get(request.endpoint or ""), "max_body_bytes", None)
    if declared:  # a view's own bound (`limited`: the doors' images)
        return declared
    if request.endpoint == "api.submit":
        return defaults.MAX_PROMPT_FILE_BYTES if is_prompt_file(request.mimetype) else defaults.MAX_JSON_BODY_BYTES
    return defaults.MAX_OTHER_BODY_BYTES


def read_limited(request: Request, limit: int) -> bytes:
    """The raw body, refused (413 naming `body`) beyond `limit` bytes, even without Content-Length."""
    if request.content_length is not None and request.content_length > limit:
        raise InvalidInput("body", f"a body of {request.content_length} bytes exceeds this endpoint's limit of "
                           f"{limit} bytes", code="too_large", status=413)
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise InvalidInput("body", f"the body exceeds this endpoint's limit of {limit} bytes", code="too_large",
                           status=413)
    return data


def _structure(data: bytes) -> bytes:
    """The brackets and commas of a JSON text that lie outside its strings (memory: a few times the text)."""
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    reduced = data.translate(None, _NOT_STRUCTURE)
    out = bytearray()
    in_string = False
    for start in range(0, len(reduced), _SLICE):
        parts = reduced[start:start + _SLICE].split(b'"')
        out += b"".join(parts[1::2] if in_string else parts[0::2])
        in_string ^= len(parts) % 2 == 0
    return bytes(out)


def check_json_shape(data: bytes, max_values: int, max_depth: int = defaults.MAX_JSON_DEPTH) -> None:
    """Refuse (unparsed) a JSON text with more than `max_values` values or nested deeper than `max_depth`."""
    structure = _structure(data)
    containers = structure.count(b"[") + structure.count(b"{")
    values = containers + structure.count(b",") + 1
    if values > max_values:
        raise InvalidInput("body", f"the JSON body holds about {values} values; this server takes at most "
                           f"{max_values}", code="too_large", status=413)
    depth = deepest = 0
    for byte in structure.translate(None, b","):
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    if deepest > max_depth:
        raise InvalidInput("body", f"the JSON body is nested {deepest} levels deep; at most {max_depth}",
                           code="invalid_json", status=400)


CONTENT_TYPES = {
    "text/plain": "body.txt",
    "text/csv": "body.csv",
    "application/x-ndjson": "body.jsonl",
    "application/jsonl": "body.jsonl",
    "application/json-lines": "body.jsonl",
}
"""Accepted prompt-file media types and the file name whose format they select."""

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


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]!r} is out of range")
    return value


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


def parse_json(data: bytes, max_items: int) -> Any:
    """A JSON body parsed within the bounds of `check_json_shape`; 400 naming `body` if it is not JSON."""
    check_json_shape(data, max_items * defaults.JSON_VALUES_PER_ITEM + defaults.JSON_VALUES_BASE)
    try:
        return json.loads(data, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput("body", f"the body is not valid JSON: {str(exc)[:200]}", code="invalid_json",
                           status=400) from None


def decode_text(data: bytes, field: str = "body") -> str:
    """A text body as UTF-8; 400 naming `field` on invalid UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(field, f"{field} is not valid UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 4]!r})",
                           code="invalid_encoding", status=400) from None


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def field_path(parts: tuple | list) -> str:
    """A field's path as an error names it: `items[2].prompt`; odd keys quoted (`body[""]`); `body` alone."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]" if out else f"body[{part}]"
        elif _NAME.fullmatch(str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{json.dumps(str(part))}]" if out else f"body[{json.dumps(str(part))}]"
    return out or "body"


def check_strings(value: Any) -> None:
    """Refuse any string (key or value, at any depth) with a lone surrogate or a control character."""
    stack: list[tuple[Any, tuple]] = [(value, ())]
    while stack:
        obj, parts = stack.pop()
        if isinstance(obj, str):
            bad = _BAD_CHARS.search(obj)
            if bad:
                where = field_path(parts)
                raise InvalidInput(where, f"{where} contains a forbidden character U+{ord(bad.group()):04X} at "
                                   f"position {bad.start()}", code="invalid_string")
        elif isinstance(obj, dict):
            for k, v in obj.items():
                stack.append((k, parts))
                stack.append((v, (*parts, k)))
        elif isinstance(obj, list):
            stack.extend((v, (*parts, i)) for i, v in enumerate(obj))


def read_submit(request: Request, max_items: int) -> Any:
    """The submit body: a parsed JSON value, or a prompt file's text (checked before parsing)."""
    data = read_limited(request, body_limit(request))
    if is_prompt_file(request.mimetype):
        check_prompt_file(data, request.mimetype, max_items)
        return decode_text(data)
    if request.mimetype != "application/json" and not request.mimetype.endswith("+json"):
        raise InvalidInput("body", "the request body must be JSON (Content-Type: application/json) or a prompt "
                           "file (text/plain, text/csv, application/x-ndjson), got "
                           f"{request.mimetype or 'no Content-Type'!r}", code="invalid_json", status=400)
    return parse_json(data, max_items)
