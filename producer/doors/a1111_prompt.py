"""A1111 prompt syntax at the door: `<lora:NAME:WEIGHT>` tags become `params.loras`; the rest stays text.

A1111 takes extra-network tags out of the prompt and applies them; sdq does the same for LoRA tags (`<lora:...>`,
and `<lyco:...>`, its older spelling). Other extra networks (`<hypernet:...>` ...) are refused. Emphasis —
`(word:1.2)`, `(word)`, `[word]` —, prompt editing (`[a:b:0.5]`), `AND` and `BREAK` are not interpreted: sdq
does not weight tokens, so they reach the text encoder as written (documented in docs/INTEGRATIONS.md).
"""
from __future__ import annotations

import re
from typing import Any

from sdq.exceptions import InvalidInput
from sdq.loras import allowed_adapters, short_name

TAG = re.compile(r"<([A-Za-z_]+):([^<>]*)>")
"""An extra-network tag: `<kind:args>`."""

LORA_KINDS = ("lora", "lyco")
"""Tag kinds that name a LoRA adapter."""


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse_args(args: str, field: str, tag: str) -> tuple[str, float]:
    """A tag's adapter name and weight: `NAME`, `NAME:W`, or `NAME:TE:UNET` with both weights equal."""
    parts = args.split(":")
    weights: list[float] = []
    while len(parts) > 1 and (w := _number(parts[-1].strip())) is not None:
        weights.insert(0, w)
        parts.pop()
    name = ":".join(parts).strip()
    if not name:
        raise InvalidInput(field, f"{field}: {tag} names no LoRA")
    if len(weights) > 2 or (len(weights) == 2 and weights[0] != weights[1]):
        raise InvalidInput(field, f"{field}: {tag}: sdq applies one weight to the text encoder and the UNet alike; "
                           "give one weight")
    return name, weights[0] if weights else 1.0


def _adapter_id(name: str, allowlist: tuple[str, ...], field: str, tag: str) -> str:
    """The adapter id a tag's name stands for: an allowed id, or the short name A1111 shows for one."""
    allowed = allowed_adapters(allowlist)
    if name in allowed:
        return name
    for adapter in allowed:
        if short_name(adapter) == name:
            return adapter
    raise InvalidInput(field, f"{field}: {tag}: unknown LoRA {name!r}; known: "
                       f"{', '.join(short_name(a) for a in allowed)}")


def split_prompt(prompt: str, allowlist: tuple[str, ...], field: str = "prompt") -> tuple[str, list[dict[str, Any]]]:
    """The prompt without its LoRA tags, and those tags as `params.loras` entries; InvalidInput naming
    `field` for another extra network, an unknown LoRA or the same one twice."""
    loras: list[dict[str, Any]] = []

    def take(m: re.Match[str]) -> str:
        kind, tag = m.group(1).lower(), m.group(0)
        if kind not in LORA_KINDS:
            raise InvalidInput(field, f"{field}: {tag}: sdq applies LoRA tags only (<lora:NAME:WEIGHT>), not "
                               f"{kind!r} networks")
        name, weight = _parse_args(m.group(2), field, tag)
        adapter = _adapter_id(name, allowlist, field, tag)
        if any(lo["name"] == adapter for lo in loras):
            raise InvalidInput(field, f"{field}: LoRA {name!r} is tagged twice")
        loras.append({"name": adapter, "scale": weight})
        return " "

    text = TAG.sub(take, prompt)
    return re.sub(r"[ \t]{2,}", " ", text).strip(" \t,") if loras else prompt, loras


def refuse_tags(text: str, field: str) -> None:
    """InvalidInput naming `field` when `text` (a negative prompt) holds extra-network tags."""
    m = TAG.search(text)
    if m is not None:
        raise InvalidInput(field, f"{field}: {m.group(0)}: extra-network tags are applied from the prompt only")
