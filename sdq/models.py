"""Which models a caller may name: built-ins plus the operator's `SDQ_MODELS` allowlist.

Torch-free: the producer validates model ids with it; the worker loads them in `workers.pipelines`
(built-ins made by `workers.builtin`, pushed ones fetched by `storage.models`).
"""
from __future__ import annotations

import os
from pathlib import Path

from sdq.exceptions import InvalidInput

BUILTIN_MODELS: dict[str, tuple[str, ...]] = {
    "builtin:tiny-sd": ("txt2img", "img2img"),
    "builtin:tiny-upscaler": ("upscale",),
    "builtin:tiny-depth": ("depth2img",),
    # Full-size shapes with random weights (`workers.builtin_fullsize`): generated on first use, ~4-5 GB each.
    "builtin:sd15-shaped": ("txt2img", "img2img"),
    "builtin:sd2-768-shaped": ("txt2img", "img2img"),
}
"""Built-in model id -> pipelines it serves."""

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")

STORE_PREFIX = "store:"
"""Prefix of models pushed to the bucket (`sdq models push PATH --as NAME` -> `store:NAME`)."""

BUILTIN_FORMAT = "2"
"""Version of the built-in generators; a new one makes a new cache folder."""


def builtin_path(models_dir: Path, name: str) -> Path:
    """Folder of built-in model `name` (without `builtin:`) inside the model cache."""
    return Path(models_dir) / "builtin" / f"{name}-v{BUILTIN_FORMAT}"


def allowed_models(allowlist: tuple[str, ...]) -> list[str]:
    """Every model id a caller may name, built-ins first."""
    return list(BUILTIN_MODELS) + [m for m in allowlist if m not in BUILTIN_MODELS]


def model_kind(model_id: str) -> str:
    """`builtin`, `store` (pushed to the bucket), `file` (single checkpoint), `folder` (local diffusers
    folder) or `hub`."""
    if model_id.startswith("builtin:"):
        return "builtin"
    if model_id.startswith(STORE_PREFIX):
        return "store"
    if model_id.lower().endswith(SINGLE_FILE_SUFFIXES):
        return "file"
    if os.path.isabs(model_id) or model_id.startswith(("./", "../", "~")) or Path(model_id).is_dir():
        return "folder"
    return "hub"


def check_model(model_id: str, pipeline: str, allowlist: tuple[str, ...]) -> None:
    """Raise InvalidInput unless `model_id` is allowed and can run `pipeline`."""
    if not isinstance(model_id, str) or not model_id:
        raise InvalidInput("model", f"model must be a non-empty string, got {model_id!r}")
    if "://" in model_id or ".." in model_id.replace("\\", "/").split("/"):
        raise InvalidInput("model", f"model {model_id!r} is a URL or a relative path; name an allowed model id")
    if model_id not in allowed_models(allowlist):
        raise InvalidInput("model", f"unknown model {model_id!r}; allowed: {', '.join(allowed_models(allowlist))}",
                           code="unknown_model")
    pipelines = BUILTIN_MODELS.get(model_id)
    if pipelines is not None and pipeline not in pipelines:
        raise InvalidInput("pipeline", f"model {model_id!r} cannot run pipeline {pipeline!r}; it serves "
                           f"{', '.join(pipelines)}", code="unsupported_pipeline")
