"""Diffusers model folders as published: which weight variant to load, components whose class
the installed transformers no longer has, and which pipeline class and family a model is."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from sdq import families, options
from sdq.exceptions import ModelError
from sdq.sources import FP16_VARIANT

log = logging.getLogger(__name__)

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


def with_current_classes(folder: Path, scratch: Path) -> Path:
    """`folder` itself, or, when its `model_index.json` names transformers classes that no longer
    exist (`DPTFeatureExtractor`...), a view of it under `scratch` whose index names their current
    replacements and whose other entries link to the original files (the folder is not changed)."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    renamed = {}
    for name, spec in index.items():
        if not name.startswith("_") and isinstance(spec, list) and len(spec) == 2 and None not in spec:
            new = replacement_class(*spec)
            if new is not None:
                renamed[name] = [spec[0], new]
    if not renamed:
        return folder
    patched = {**index, **renamed}
    digest = hashlib.sha256(f"{folder.resolve()}\n{json.dumps(patched, sort_keys=True)}".encode()).hexdigest()[:16]
    view = scratch / f"{folder.name}-{digest}"
    if not (view / "model_index.json").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f".{view.name}-", dir=_mkdir(scratch)))
        for entry in folder.iterdir():
            if entry.name != "model_index.json":
                (tmp / entry.name).symlink_to(entry.resolve())
        (tmp / "model_index.json").write_text(json.dumps(patched, indent=2), encoding="utf-8")
        try:
            os.rename(tmp, view)
        except OSError:  # another process made the same view
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: %s renamed in transformers %s; loading through %s", folder,
             ", ".join(f"{index[k][1]} -> {v[1]}" for k, v in renamed.items()), _transformers_version(), view)
    return view


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def absent_components(folder: Path) -> dict[str, None]:
    """Components `model_index.json` lists as absent (`[null, null]`), each as None: diffusers only
    leaves out those its class declares optional, and SD3 saved without its T5 encoder
    (`text_encoder_3`, `tokenizer_3`) loads only when they are passed as None."""
    index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    return {name: None for name, spec in index.items()
            if not name.startswith("_") and isinstance(spec, list) and spec == [None, None]}


def family_of(model_id: str, pipe) -> str:
    """The family of a loaded pipeline, from its class (the one its model_index.json named): a family
    sdq does not run is a ModelError; a class the table does not know is run as SD (community
    variants of SD pipelines share its modules), with a warning."""
    name = type(pipe).__name__
    try:
        return families.from_class_name(name)
    except families.UnknownFamily as exc:
        if families.unsupported(name) is not None:
            raise ModelError(f"model {model_id!r}: {exc}") from None
    log.warning("model %s: pipeline class %s is not in the family table; running it as %s", model_id, name,
                families.SD)
    return families.SD


def pipeline_class_name(config: Path) -> str:
    """The pipeline class a single file's config folder names (StableDiffusionPipeline when none sdq knows)."""
    name = json.loads((config / "model_index.json").read_text(encoding="utf-8")).get("_class_name", "")
    return name if name in options.pipeline_classes() else "StableDiffusionPipeline"
