"""The OpenAI Images API's request fields, checked and turned into an sdq submit body.

OpenAI refuses an argument it does not know (400, `Unrecognized request argument supplied`): so does
this door. Fields OpenAI defines that sdq cannot honour are refused with a 400 naming them
(`stream`, `background: transparent`, `output_format: gif|svg`, `svg`, `markup`, GIF frames); fields
that only tune OpenAI's own service are accepted and have no effect (`moderation`, `style`,
`complexity`, `input_fidelity`, `partial_images` without streaming, `user`, `safety_identifier`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from producer.bodies import field_path
from sdq import defaults
from sdq.config import OWNER_PATTERN
from sdq.exceptions import ConfigError, InvalidInput

N_MAX = 10
"""Most images per request (OpenAI's own limit)."""

WAIT_SECONDS = 300.0
"""How long a request waits for its job by default (`SDQ_OPENAI_WAIT_SECONDS`)."""

QUALITY_STEPS: dict[str, float] = {"low": 0.5, "medium": 1.0, "standard": 1.0, "auto": 1.0, "high": 2.0, "hd": 2.0,
                                   "xhigh": 2.5, "max": 3.0}
"""`quality` -> denoising steps as a multiple of sdq's default (20): low 10, medium/standard/auto 20,
high/hd 40, xhigh 50, max 60."""

OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
"""`output_format` -> Pillow's format name."""

RESPONSE_FORMATS = ("url", "b64_json")

IGNORED: dict[str, tuple[str, ...] | None] = {
    "moderation": ("low", "auto"), "style": ("vivid", "natural"), "complexity": ("low", "medium", "high"),
    "input_fidelity": ("high", "low"), "user": None, "safety_identifier": None,
}
"""Fields accepted without effect (sdq has no such control), with their allowed values (None: any short string)."""

REFUSED = {"svg": "sdq makes raster images: SVG output is not available",
           "markup": "sdq takes no markup image; describe the change in the prompt",
           "frame_count": "sdq makes no GIFs", "frame_duration_ms": "sdq makes no GIFs"}
"""Fields of OpenAI's API that sdq cannot honour: refused (400) when given a value."""

KNOWN = {"prompt", "model", "n", "size", "quality", "response_format", "output_format", "output_compression",
         "background", "stream", "partial_images", *IGNORED, *REFUSED}
"""Every field a request may carry (edits add `image`, `image[]` and `mask`)."""

_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")


@dataclass(frozen=True)
class DoorSettings:
    """The OpenAI door's settings, read from the environment at the edge (the app factory)."""

    aliases: dict[str, str] = field(default_factory=dict)
    """OpenAI model name -> sdq model id (`SDQ_OPENAI_MODELS=dall-e-3=builtin:tiny-sd,...`)."""
    wait_seconds: float = WAIT_SECONDS
    """How long a request waits for its job (`SDQ_OPENAI_WAIT_SECONDS`); then 408 naming the job, which goes on."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> DoorSettings:
        """Settings from `env` (default os.environ); ConfigError naming the variable when malformed."""
        env = dict(os.environ if env is None else env)
        aliases: dict[str, str] = {}
        for n, entry in enumerate(e.strip() for e in env.get("SDQ_OPENAI_MODELS", "").split(",")):
            if not entry:
                continue
            alias, sep, target = (part.strip() for part in entry.partition("="))
            if not sep or not OWNER_PATTERN.fullmatch(alias) or not target:
                raise ConfigError(f"SDQ_OPENAI_MODELS: entry {n + 1} ({entry[:40]!r}) must be 'alias=sdq-model-id', "
                                  "e.g. dall-e-3=builtin:tiny-sd")
            aliases[alias] = target
        raw = env.get("SDQ_OPENAI_WAIT_SECONDS") or str(WAIT_SECONDS)
        try:
            wait = float(raw)
        except ValueError:
            wait = -1.0
        if not 0 < wait <= 86400:
            raise ConfigError(f"SDQ_OPENAI_WAIT_SECONDS={raw!r} must be a number of seconds between 0 and 86400")
        return cls(aliases, wait)

    def resolve(self, model: str | None) -> str:
        """The sdq model id an OpenAI `model` names: an alias's target, else the id itself; without a model,
        the first alias's target (else sdq's default model)."""
        if model is None:
            return next(iter(self.aliases.values()), defaults.MODEL)
        return self.aliases.get(model, model)


@dataclass(frozen=True)
class ImageRequest:
    """A checked OpenAI image request."""

    prompt: str
    model: str
    """The name the caller used (an alias or an sdq id)."""
    n: int
    size: tuple[int, int] | None
    steps: int | None
    response_format: str
    output_format: str
    compression: int | None
    quality: str | None


def _bad(param: str, message: str, code: str = "invalid_value") -> InvalidInput:
    return InvalidInput(param, message, code=code, status=400)


def _text(body: dict[str, Any], name: str, choices: tuple[str, ...] | None = None, required: bool = False,
          max_chars: int = 256) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _bad(name, f"Missing required parameter: '{name}'.", "missing_required_parameter")
        return None
    if not isinstance(value, str):
        raise _bad(name, f"Invalid type for '{name}': expected a string, but got {type(value).__name__}.",
                   "invalid_type")
    if choices is not None and value not in choices:
        raise _bad(name, f"Invalid value: {value[:80]!r}. Supported values are: {', '.join(map(repr, choices))}.")
    if len(value) > max_chars:
        raise _bad(name, f"'{name}' is {len(value)} characters long; at most {max_chars}.", "string_above_max_length")
    return value


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,9}", value.strip()):  # multipart form fields are text
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"Invalid type for '{name}': expected an integer, but got {value!r:.80}.", "invalid_type")
    if not low <= value <= high:
        raise _bad(name, f"'{name}' must be between {low} and {high}, got {value}.")
    return value


def _size(value: str | None) -> tuple[int, int] | None:
    if value is None or value == "auto":
        return None
    match = _SIZE.fullmatch(value)
    if not match:
        raise _bad("size", f"Invalid value: {value[:40]!r}. size must be 'auto' or 'WIDTHxHEIGHT', e.g. '512x512'.")
    return int(match.group(1)), int(match.group(2))


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def unknown(name: str) -> InvalidInput:
    """OpenAI's refusal of an argument it does not know (the param named as sdq names odd keys: `body[""]`)."""
    return _bad(field_path((name,)), f"Unrecognized request argument supplied: {name[:80]}", "unknown_parameter")


def _check_unsupported(body: dict[str, Any]) -> None:
    """Refuse OpenAI fields sdq cannot honour; check the accepted-without-effect ones' values."""
    for name in body:
        if name not in KNOWN:
            raise unknown(name)
    if _truthy(body.get("stream")):
        raise _bad("stream", "Streaming is not supported by sdq: leave `stream` unset or false.", "unsupported_value")
    for name, why in REFUSED.items():
        if body.get(name) not in (None, ""):
            raise _bad(name, f"'{name}' is not supported: {why}.", "unsupported_value")
    if _text(body, "background", ("transparent", "opaque", "auto")) == "transparent":
        raise _bad("background", "Transparent backgrounds are not supported: use 'opaque' or 'auto'.",
                   "unsupported_value")
    _integer(body, "partial_images", 0, 3)
    for name, choices in IGNORED.items():
        _text(body, name, choices)


def parse_request(body: dict[str, Any], max_prompt: int) -> ImageRequest:
    """Check an OpenAI generation or edit request (JSON, or multipart form fields as text); 400 naming the param."""
    _check_unsupported(body)
    prompt = _text(body, "prompt", required=True, max_chars=max_prompt)
    if not prompt.strip():
        raise _bad("prompt", "'prompt' must not be empty.")
    out_fmt = _text(body, "output_format", ("png", "jpeg", "webp", "gif", "svg")) or "png"
    if out_fmt not in OUTPUT_FORMATS:
        raise _bad("output_format", f"output_format {out_fmt!r} is not supported: use png, jpeg or webp.",
                   "unsupported_value")
    response_format = _text(body, "response_format", RESPONSE_FORMATS) or "url"
    if response_format == "url" and out_fmt != "png":
        raise _bad("output_format", f"output_format {out_fmt!r} is returned as b64_json; with response_format "
                   "'url' the image is the stored PNG.", "unsupported_value")
    compression = _integer(body, "output_compression", 0, 100)
    if compression is not None and out_fmt == "png":
        raise _bad("output_compression", "output_compression applies to the jpeg and webp output formats only.",
                   "unsupported_value")
    quality = _text(body, "quality", tuple(QUALITY_STEPS))
    steps = round(defaults.STEPS * QUALITY_STEPS[quality]) if quality else None
    return ImageRequest(prompt=prompt, model=_text(body, "model", max_chars=1000) or "",
                        n=_integer(body, "n", 1, N_MAX) or 1, size=_size(_text(body, "size", max_chars=40)),
                        steps=steps, response_format=response_format, output_format=out_fmt,
                        compression=compression, quality=quality)


# -- the published request schemas (the OpenAPI document; the checks above are what the door applies) --

from typing import Literal  # noqa: E402

from pydantic import BaseModel, ConfigDict, Field  # noqa: E402


class OpenAIImageRequest(BaseModel):
    """Body of `POST /openai/v1/images/generations` (and the text fields of `images/edits`)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, max_length=4000)
    model: str | None = Field(None, max_length=1000, description="an sdq model id or an alias (SDQ_OPENAI_MODELS)")
    n: int | None = Field(None, ge=1, le=N_MAX)
    size: str | None = Field(None, max_length=40, description="`auto` or `WIDTHxHEIGHT` (multiples of 8)")
    quality: Literal[tuple(QUALITY_STEPS)] | None = None  # type: ignore[valid-type]
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    background: Literal["opaque", "auto"] | None = None
    stream: Literal[False] | None = None
    partial_images: int | None = Field(None, ge=0, le=3)
    moderation: Literal["low", "auto"] | None = None
    style: Literal["vivid", "natural"] | None = None
    user: str | None = Field(None, max_length=256)
    safety_identifier: str | None = Field(None, max_length=256)


class OpenAIError(BaseModel):
    """OpenAI's error object: `{"error": {"message", "type", "param", "code"}}`."""

    error: dict[str, str | None]
