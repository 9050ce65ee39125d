"""`params.loras`: LoRA adapters applied to every item of the job (`[{"name", "scale"}]`).

The adapter files themselves (names allowed, families, tags, hashes) are `sdq.loras`; the worker
hook (`workers.options.loras`) loads them into the warm model and switches them per chunk.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from sdq import loras
from sdq.options.base import CacheInputs, Describe, FormField, OptionSpec, Submit
from sdq.params import Param, Text
from sdq.sources import STORE_PREFIX, source_for

NAME_MAX_CHARS = 1000
"""Longest adapter id (like a model id)."""


class Loras(OptionSpec):
    """LoRA adapters: checked against the allowlist and the model's family, keyed by their files'
    contents, written as A1111's prompt tags and `Lora hashes`, kept warm on the worker."""

    name = loras.FIELD
    title = "LoRA"
    doc = "LoRA adapters applied for this job: `[{\"name\": ..., \"scale\": ...}]`"
    fields = (Text("name", NAME_MAX_CHARS, required=True),
              Param("scale", float, -loras.SCALE_MAX, loras.SCALE_MAX, loras.SCALE))
    schema_name = "LorasEntry"
    many = loras.MAX_ADAPTERS
    schema_defaults = True
    pipelines = loras.PIPELINES
    legend = "LoRA"
    form = (FormField("", "LoRA adapters (NAME or NAME:SCALE, comma-separated)", "list",
                      (("placeholder", "builtin:tiny-lora:0.8"),)),)

    names_weights = True

    def weights(self, allowlist: tuple[str, ...], describe: Describe | None = None) -> dict[str, str | None]:
        """Allowed adapters the producer can recognise -> their family: the built-ins, local adapter files and
        pushed adapters (without `describe`, a pushed entry cannot be told from a model: it is left out)."""
        out: dict[str, str | None] = {}
        for adapter in loras.allowed_adapters(allowlist):
            if adapter.startswith(STORE_PREFIX):
                family, is_adapter = describe(adapter) if describe is not None else (None, False)
                if is_adapter:
                    out[adapter] = family
                continue
            try:
                found = loras.adapter_family(adapter)
            except ValueError:  # a local .safetensors file that is a checkpoint, not an adapter
                continue
            if found is not None:
                out[adapter] = found
        return out

    def check(self, value: Any, ctx: Submit) -> Any:
        """The adapters as `[{"name", "scale"}]` (`sdq.loras.check_loras`)."""
        return loras.check_loras(value, ctx.model, ctx.spec.name, ctx.allowlist, ctx.family)

    def cache_inputs(self, value: Any) -> CacheInputs:
        """Each adapter file's contents are in the key (a name pushed again is a new key)."""
        return CacheInputs(adapters=tuple(lo["name"] for lo in value))

    def warm_ids(self, value: Any) -> list[str]:
        """The adapter ids: a worker holding them loaded runs the chunk without loading them."""
        return [lo["name"] for lo in value or ()]

    def prompt(self, prompt: str, value: Any) -> str:
        """The prompt with the adapters' `<lora:name:scale>` tags appended."""
        return loras.prompt_with_tags(prompt, value)

    def infotext(self, value: Any, applied: Any = None) -> dict[str, Any]:
        """`Lora hashes` (`applied`: the short hashes by id) and `Lora ids`."""
        return loras.infotext_fields(value, applied)

    def from_infotext(self, info: dict[str, Any]) -> Any:
        """The adapters named by the prompt's tags."""
        return loras.from_infotext(info)[1] or None

    def prompt_from_infotext(self, info: dict[str, Any]) -> str:
        """The prompt without its tags."""
        return loras.from_infotext(info)[0]

    def model_rows(self, allowlist: tuple[str, ...], models_dir: Path, rows: dict[str, dict[str, Any]]) -> list[dict]:
        """Mark the allowed adapters among the rows (`lora: true`, the family read from the file); rows for
        the built-in adapters, which are not models."""
        new = []
        for adapter in loras.allowed_adapters(allowlist):
            row = rows.get(adapter)
            if row is None:
                source = source_for(adapter)
                row = {"id": adapter, "kind": source.kind, **source.listing(models_dir)}
                if "path" in row and source.kind == "builtin":
                    row["present"] = (Path(row["path"]) / loras.ADAPTER_FILE).exists()
                new.append(row)
            row.update(lora=True, family=loras.adapter_family(adapter) or row.get("family"))
        return new

    def row_note(self, row: dict[str, Any]) -> str:
        """`  (LoRA)` on an adapter's line."""
        return "  (LoRA)" if row.get("lora") else ""

    def push_note(self, manifest: dict[str, Any]) -> str | None:
        """A pushed adapter file says its family and where to name it."""
        found = manifest.get("lora")
        return f"a {found['family']} LoRA adapter: name it in params.{self.name}" if found else None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """`--lora NAME[:SCALE]`, repeated."""
        parser.add_argument("--lora", dest=self.name, action="append", metavar="NAME[:SCALE]",
                            help="apply an allowed LoRA adapter (repeat for several), e.g. builtin:tiny-lora:0.8")

    def from_args(self, args: argparse.Namespace, upload: Callable[[str, str], str]) -> Any:
        """The `--lora` flags as entries."""
        given = getattr(args, self.name, None)
        return [loras.parse_flag(text) for text in given] if given else None
