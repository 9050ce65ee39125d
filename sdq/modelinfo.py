"""What the producer knows of a model before any worker loads it: the built-ins' families and sizes,
and a local model's family, memory need and distilled variant read from its files. Torch-free."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

from sdq.families import (FAMILIES, FLUX, SD, SD3, SD_DEPTH, SD_UPSCALE, SDXL, Family, UnknownFamily, UnsupportedFamily,
                          detect)
from sdq.families import FLUX2, FLUX2_KLEIN, QWEN_IMAGE, Z_IMAGE
from sdq.families import LTX, WAN
from sdq import pipelines
from sdq.memory import Memory, quantized
from sdq.sources import source_for
from sdq.tensorfiles import tensor_names


TINY = Memory(0.2, 0.5)
"""The built-in tiny models' need (a few MB of weights; working memory at most ~0.5 GB per Mpx on a CPU)."""

BUILTIN_FAMILIES: dict[str, str] = {
    "builtin:tiny-sd": SD,
    "builtin:tiny-upscaler": SD_UPSCALE,
    "builtin:tiny-depth": SD_DEPTH,
    "builtin:tiny-sdxl": SDXL,
    "builtin:tiny-sd3": SD3,
    "builtin:tiny-flux": FLUX,
    "builtin:tiny-flux-schnell": FLUX,
    "builtin:tiny-flux-gguf": FLUX,  # tiny-flux with a GGUF (Q8_0) transformer
    "builtin:tiny-z-image": Z_IMAGE,
    "builtin:tiny-z-image-turbo": Z_IMAGE,
    "builtin:tiny-z-image-gguf": Z_IMAGE,  # tiny-z-image with a GGUF (Q8_0) transformer
    "builtin:tiny-qwen-image": QWEN_IMAGE,
    "builtin:tiny-flux2-dev": FLUX2,  # dev-shaped (Mistral3 encoder, guidance input)
    "builtin:tiny-flux2": FLUX2_KLEIN,  # Klein-shaped (Qwen3 encoder)
    "builtin:tiny-flux2-distilled": FLUX2_KLEIN,
    "builtin:tiny-flux2-gguf": FLUX2_KLEIN,  # tiny-flux2 with a GGUF (Q8_0) transformer
    "builtin:tiny-wan": WAN,  # text-to-video only (a Wan T2V transformer)
    "builtin:tiny-wan-i2v": WAN,  # image-to-video only (a Wan I2V transformer)
    "builtin:tiny-ltx": LTX,
    # Full-size shapes with random weights (`workers.builtins.fullsize`): generated on first use, ~4-5 GB each.
    "builtin:sd15-shaped": SD,
    "builtin:sd2-768-shaped": SD,
}
"""Built-in model id -> its family."""

BUILTIN_PIPELINES: dict[str, tuple[str, ...]] = {"builtin:tiny-wan": ("txt2video",),
                                                  "builtin:tiny-wan-i2v": ("img2video",)}
"""Built-ins that run fewer pipelines than their family does."""

ONE_CLASS_FAMILIES = frozenset({WAN})
"""Families whose models each run only the pipeline of their own diffusers class: a Wan T2V model and a Wan
I2V model differ in their weights (the I2V transformer takes image embeddings). The other families' models
run every pipeline of their family whatever class they were saved with."""

TINY_PREFIX = "builtin:tiny-"
"""Ids of the tiny built-ins (random weights, a few MB); other built-ins need their family's memory."""

BUILTIN_SIDES = {"builtin:tiny-sdxl": 256, "builtin:tiny-sd3": 256, "builtin:tiny-flux": 128,
                 "builtin:tiny-flux-schnell": 128, "builtin:tiny-flux-gguf": 128,
                 "builtin:tiny-z-image": 128, "builtin:tiny-z-image-turbo": 128,
                 "builtin:tiny-z-image-gguf": 128,
                 "builtin:tiny-qwen-image": 128,
                 "builtin:tiny-flux2-dev": 128,
                 "builtin:tiny-flux2": 128, "builtin:tiny-flux2-distilled": 128, "builtin:tiny-flux2-gguf": 128,
                 "builtin:tiny-wan": 64, "builtin:tiny-wan-i2v": 64, "builtin:tiny-ltx": 64,
                 }
"""Default width and height of the tiny built-ins whose family's default is larger (their sample size
times 8: diffusers' own default for them); the others take their family's."""


@dataclass(frozen=True)
class ModelInfo:
    """What the producer knows of a model before any worker loads it."""

    family: Family | None
    """None: not known here (a hub id or a pushed model; the worker finds out when it loads it)."""
    memory: Memory | None
    default_side: int | None
    distilled: bool = False
    """A timestep-distilled model of its family (`family` is then `Family.as_distilled()`)."""
    pipelines: tuple[str, ...] | None = None
    """The pipelines this model runs when fewer than its family's (`ONE_CLASS_FAMILIES`); None: all of them."""


BUILTIN_DISTILLED = frozenset({"builtin:tiny-flux-schnell",
                               "builtin:tiny-z-image-turbo",
                               "builtin:tiny-flux2-distilled"})
"""Built-ins that are timestep-distilled models."""

GUIDANCE_KEYS = ("guidance_in.", "model.diffusion_model.guidance_in.", "time_text_embed.guidance_embedder.")
"""Tensor-name prefixes of Flux's distilled-guidance input (dev has it, schnell does not)."""


def is_distilled(path: Path, family: str = FLUX) -> bool:
    """Whether the `family` model at `path` is timestep-distilled, read from the model itself. Flux.1 (schnell-like):
    its transformer's config says `guidance_embeds: false` (a folder, or a file's config folder beside it), or a
    single file's tensors have no guidance input. Flux.2 Klein: its `model_index.json` says `is_distilled` (a Klein
    file without a config folder counts as a base model: its tensor names do not say)."""
    path = Path(path)
    folder = path if path.is_dir() else path.with_suffix("")
    if family == FLUX2_KLEIN:
        try:
            return json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("is_distilled") is True
        except (OSError, ValueError):
            return False
    config = folder / "transformer" / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("guidance_embeds") is False
        except (OSError, ValueError):
            return False
    if path.is_file() and path.suffix.lower() == ".safetensors":
        return not any(k.startswith(GUIDANCE_KEYS) or ".guidance_in." in k for k in tensor_names(path, UnknownFamily))
    return False


TURBO_MARK = "turbo"
"""What the name of a Z-Image-Turbo model holds (case aside): `Z-Image-Turbo`, `z_image_turbo_bf16.safetensors`."""


def is_turbo(path: Path) -> bool:
    """Whether the Z-Image model at `path` is Z-Image-Turbo (8 steps, no guidance). Its weights and configs
    have Z-Image's shapes, so its name tells: the folder's or file's own, or the `_name_or_path` a copy saved
    with diffusers records in its `model_index.json` (`Tongyi-MAI/Z-Image-Turbo`)."""
    path = Path(path)
    index = (path if path.is_dir() else path.with_suffix("")) / "model_index.json"
    recorded = ""
    if index.is_file():
        try:
            recorded = str(json.loads(index.read_text(encoding="utf-8")).get("_name_or_path", ""))
        except (OSError, ValueError):
            recorded = ""
    return TURBO_MARK in path.name.lower() or TURBO_MARK in Path(recorded).name.lower()


DISTILLED_CHECKS = {FLUX: is_distilled,
                    FLUX2_KLEIN: partial(is_distilled, family=FLUX2_KLEIN),
                    Z_IMAGE: is_turbo}
"""Family -> how a model of it is told to be its timestep-distilled variant, from the model itself."""


def model_info(model_id: str) -> ModelInfo:
    """The family, memory need and default size of `model_id`, from what the producer can read: a
    built-in's id, an (allowlisted) local folder's `model_index.json`, a local file's header.
    UnsupportedFamily when the model is of a family sdq recognises and does not run; a model that
    cannot be read or matches no family is "not known here" (the worker decides when it loads it)."""
    kind = source_for(model_id).kind
    if kind == "builtin":
        name = BUILTIN_FAMILIES.get(model_id)
        if name is None:
            return ModelInfo(None, None, None)
        side = BUILTIN_SIDES.get(model_id, FAMILIES[name].default_side)
        fam = FAMILIES[name].as_distilled() if model_id in BUILTIN_DISTILLED else FAMILIES[name]
        return ModelInfo(fam, TINY if model_id.startswith(TINY_PREFIX) else fam.memory, side,
                         model_id in BUILTIN_DISTILLED, BUILTIN_PIPELINES.get(model_id))
    path = Path(model_id).expanduser()
    if kind in ("folder", "file") and path.exists():
        marker = path / "model_index.json" if path.is_dir() else path
        st = marker.stat() if marker.exists() else path.stat()
        try:
            name, distilled, runs = _detect_once(str(path), st.st_size, st.st_mtime_ns)
        except UnsupportedFamily:
            raise
        except UnknownFamily:
            return ModelInfo(None, None, None)
        fam = FAMILIES[name].as_distilled() if distilled else FAMILIES[name]
        memory = quantized(fam.memory, st.st_size / 2**30) if path.suffix.lower() == ".gguf" else fam.memory
        return ModelInfo(fam, memory, fam.default_side, distilled, runs)
    return ModelInfo(None, None, None)


@lru_cache(maxsize=256)
def _detect_once(path: str, size: int, mtime_ns: int) -> tuple[str, bool, tuple[str, ...] | None]:
    """`detect` (and, for a family with a distilled variant, `is_distilled`; for a family of one-class models,
    the pipelines it runs), once per version of the file it reads (a checkpoint's header is read once, not per submit)."""
    name = detect(Path(path))
    check = DISTILLED_CHECKS.get(name) if FAMILIES[name].distilled is not None else None
    runs = pipelines_of(Path(path), name) if name in ONE_CLASS_FAMILIES else None
    return name, check is not None and check(Path(path)), runs


def pipelines_of(path: Path, family: str) -> tuple[str, ...] | None:
    """The pipelines of `family` whose diffusers class is the one the folder's `model_index.json` names
    (None: not a folder, or its class runs none of them: the worker decides)."""
    try:
        class_name = json.loads((path / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError):
        return None
    runs = tuple(name for name, spec in pipelines.SPECS.items() if spec.class_for(family) == class_name)
    return runs or None
