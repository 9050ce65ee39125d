"""Which models a caller may name: built-ins plus the operator's `SDQ_MODELS` allowlist.

Torch-free: the producer validates model ids with it; the worker loads them in `workers.loading.pipelines`
(each kind of id is a source in `sdq.sources`).
"""
from __future__ import annotations

from sdq import pipelines
from sdq.exceptions import InvalidInput
from sdq.modelinfo import BUILTIN_FAMILIES, BUILTIN_PIPELINES
from sdq.sources import source_for

BUILTIN_MODELS: dict[str, tuple[str, ...]] = {m: BUILTIN_PIPELINES.get(m) or pipelines.pipelines_for(f)
                                              for m, f in BUILTIN_FAMILIES.items()}
"""Built-in model id -> pipelines it serves: every pipeline with a class for its family (Wan's: its own one)."""


def allowed_models(allowlist: tuple[str, ...]) -> list[str]:
    """Every model id a caller may name, built-ins first."""
    return list(BUILTIN_MODELS) + [m for m in allowlist if m not in BUILTIN_MODELS]


def model_kind(model_id: str) -> str:
    """`builtin`, `store` (pushed to the bucket), `file` (single checkpoint), `folder` (local diffusers
    folder) or `hub`: the kind of its source (`sdq.sources`)."""
    return source_for(model_id).kind


__all__ = ["BUILTIN_FAMILIES", "BUILTIN_MODELS", "allowed_models", "check_model",
           "model_kind"]


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
