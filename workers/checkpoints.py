"""Diffusers model folders as published: which weight variant to load, and components whose class
the installed transformers no longer has."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FP16_VARIANT = "fp16"
"""The weight variant name published checkpoints use for half-precision files."""

WEIGHT_SUFFIXES = (".safetensors", ".bin")
"""Weight file suffixes of diffusers and transformers components."""

RENAMED_CLASSES = {"FeatureExtractor": "ImageProcessor"}
"""Suffix renames of transformers classes that older `model_index.json` files still name
(`DPTFeatureExtractor` -> `DPTImageProcessor`, `CLIPFeatureExtractor` -> `CLIPImageProcessor`)."""


def _weight_files(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*/*") if p.name.endswith(WEIGHT_SUFFIXES)]


def has_variant(folder: Path, variant: str = FP16_VARIANT) -> bool:
    """True when some component of the diffusers folder has `variant` weights (`*.fp16.safetensors`)."""
    return any(f".{variant}." in p.name for p in _weight_files(folder))


def has_full_weights(folder: Path, variant: str = FP16_VARIANT) -> bool:
    """True when some component of the folder has weights that are not the `variant` files."""
    return any(f".{variant}." not in p.name for p in _weight_files(folder))


def choose_variant(folder: Path, half: bool) -> str | None:
    """`fp16` when the folder has fp16 weights and the worker computes in half precision (half the
    reading and no conversion), or when those are the only weights; else None (the full weights)."""
    if not has_variant(folder):
        return None
    return FP16_VARIANT if half or not has_full_weights(folder) else None


def replacement_class(library: str, class_name: str) -> str | None:
    """The current class for a component class the installed library no longer exports, or None
    when the class exists (or has no known replacement)."""
    if library != "transformers":
        return None
    import transformers

    if hasattr(transformers, class_name):
        return None
    for old, new in RENAMED_CLASSES.items():
        if class_name.endswith(old) and hasattr(transformers, class_name[: -len(old)] + new):
            return class_name[: -len(old)] + new
    return None


def renamed_components(folder: Path) -> dict[str, Any]:
    """Components of the folder whose `model_index.json` names a removed transformers class, loaded
    with the class that replaced it, as `from_pretrained` keyword arguments."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    out: dict[str, Any] = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or None in spec:
            continue
        new = replacement_class(*spec)
        if new is not None:
            import transformers

            log.info("%s: component %s names %s, which transformers %s no longer has; loading it as %s",
                     folder, name, spec[1], transformers.__version__, new)
            out[name] = getattr(transformers, new).from_pretrained(folder / name)
    return out
