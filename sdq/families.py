"""Model families: what a model is, read from the model itself, and what each family needs.

Torch-free: the producer checks a job against its model's family at submit (when it can read the
model: built-ins by id, allowlisted local folders and files), the worker loads the family's
pipeline classes and refuses items whose memory need its device cannot meet.

A family is picked from a diffusers folder's `model_index.json` (`_class_name`, the same key
diffusers' AutoPipeline reads) or, for a single `.safetensors` checkpoint, from the tensor names
in its header (`conditioner.embedders.1.` only SDXL has, `joint_blocks.` only SD3's MMDiT,
`double_blocks.` only Flux's transformer).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from sdq.sources import source_for
from sdq.tensorfiles import tensor_names

SD = "sd"
"""Stable Diffusion 1.x/2.x: a 4-channel UNet, one CLIP text encoder."""
SD_UPSCALE = "sd-upscale"
"""The x4 upscaler (a 7-channel UNet conditioned on the low-resolution image)."""
SD_DEPTH = "sd-depth"
"""Stable Diffusion 2 depth (a 5-channel UNet conditioned on a depth map)."""
SDXL = "sdxl"
"""Stable Diffusion XL: a 4-channel UNet with size/crop conditioning, two CLIP text encoders."""
SD3 = "sd3"
"""Stable Diffusion 3.x: an MMDiT transformer, two CLIP encoders and T5, a 16-channel VAE, flow matching."""
FLUX = "flux"
"""Flux.1 (dev, schnell, Kontext and their finetunes): a double/single-stream transformer with distilled
guidance, a CLIP encoder (pooled) and T5 (tokens), a 16-channel VAE, flow matching."""

FLOW_SCHEDULERS = ("flow_euler",)
"""Schedulers of flow-matching (rectified-flow) models; noise-prediction families cannot use them."""

HALF_BYTES = {"fp16": 1.0, "bf16": 1.0, "fp32": 2.0}
"""Memory of a dtype relative to half precision."""


@dataclass(frozen=True)
class Memory:
    """Device memory a model needs, in half precision: its weights plus working memory that grows
    with the output's pixel count (activations, the VAE decode). fp32 doubles both. A worker that casts
    its weight files to another dtype while loading, on a device whose memory also holds those files'
    pages (a CPU), peaks at load: every cast copy plus the largest component's files."""

    weights_gb: float
    gb_per_mpx: float
    largest_share: float = 1.0
    """The largest component's share of `weights_gb`: its files are what a cast load holds beside the
    copies (components load one after another). The UNet's share of the parameters plus ~0.05 (SD: 0.67-0.81
    by parameters, 0.75 fits the measured peaks, docs/MODELS.md)."""

    def need_gb(self, dtype: str, pixels: int, cast_from: str | None = None) -> float:
        """GiB of device memory to make one `pixels`-pixel image in `dtype` (`fp16`, `bf16`, `fp32`);
        `cast_from`: the dtype of the weight files the worker casts at load (`load_cast`), if any."""
        for name in (dtype, cast_from or dtype):
            if name not in HALF_BYTES:
                raise ValueError(f"unknown dtype {name!r}; known: {', '.join(HALF_BYTES)}")
        run = HALF_BYTES[dtype] * (self.weights_gb + self.gb_per_mpx * pixels / 2**20)
        if cast_from is None or cast_from == dtype:
            return round(run, 2)
        load = (HALF_BYTES[dtype] + HALF_BYTES[cast_from] * self.largest_share) * self.weights_gb
        return round(max(run, load), 2)

    def record(self) -> dict[str, float]:
        """The JSON form a job's `requires.memory` holds."""
        return {"weights_gb": self.weights_gb, "gb_per_mpx": self.gb_per_mpx, "largest_share": self.largest_share}

    @classmethod
    def from_record(cls, record: dict) -> Memory:
        """Back from `record()` (a record without `largest_share`, from before it, counts all the weights)."""
        return cls(float(record["weights_gb"]), float(record["gb_per_mpx"]), float(record.get("largest_share", 1.0)))


def load_cast(device: str, dtype: str) -> str | None:
    """The dtype of the weight files a worker on `device` computing in `dtype` casts at load, where the
    cast counts against its memory: a CPU (its RAM holds the files' pages too) in bf16 or fp16 reads fp32
    files (the usual published form, and the built-ins'); None on a GPU or in fp32 (the cast, if any, is
    in host RAM, or there is none)."""
    return "fp32" if device.startswith("cpu") and dtype != "fp32" else None


@dataclass(frozen=True)
class Distilled:
    """A timestep-distilled variant (FLUX.1 schnell): few steps, no guidance input, a shorter T5 sequence."""

    title: str
    steps: int
    """`steps` when the request gives none."""
    max_sequence_length: int
    """Largest `max_sequence_length` (the text length it was distilled with)."""


@dataclass(frozen=True)
class Family:
    """One model family: how it is recognised, and its defaults, limits and memory need."""

    name: str
    title: str
    class_names: tuple[str, ...]
    """`_class_name`s of `model_index.json` that mean this family (diffusers' AutoPipeline rows)."""
    file_keys: tuple[str, ...]
    """Prefixes of tensor names that mark a single-file checkpoint of this family."""
    default_side: int
    """Width and height when the request gives none (the size the family was trained at)."""
    size_multiple: int
    """Width and height must be multiples of this (VAE downsampling x transformer patch size)."""
    default_scheduler: str
    schedulers: tuple[str, ...] | None
    """Scheduler names (`params.scheduler`) the family can run; None: every noise-prediction one."""
    guidance: tuple[float, float, float]
    """(lowest, highest, default) `guidance_scale`."""
    memory: Memory
    """Need of the published full-size models: SD's measured on a CPU at full size (the full-size built-ins,
    SD 1.5 and SD 2.1-768 shapes), the others estimated from parameter counts; none measured on a GPU
    (docs/MODELS.md)."""
    params: tuple[str, ...] = ()
    """Family-specific item parameters it takes (declared in `sdq.pipelines`)."""
    default_steps: int | None = None
    """`steps` when the request gives none (None: `defaults.STEPS`)."""
    max_tokens: int | None = None
    """Largest `max_sequence_length` its models take (None: the parameter's own limit)."""
    distilled: Distilled | None = None
    """Defaults and limits of the family's timestep-distilled models (`ModelInfo.distilled` says which are)."""

    def as_distilled(self) -> Family:
        """This family as its timestep-distilled models see it: their steps default and token limit, and
        no guidance input (`guidance_scale` only 0)."""
        if self.distilled is None:
            return self
        d = self.distilled
        return replace(self, title=f"{self.title} ({d.title}-type, timestep-distilled)", guidance=(0.0, 0.0, 0.0),
                       default_steps=d.steps, max_tokens=d.max_sequence_length, distilled=None)

    def runs(self, scheduler: str) -> bool:
        """Whether scheduler `scheduler` (a `params.scheduler` name) can drive this family's models."""
        return scheduler in self.schedulers if self.schedulers is not None else scheduler not in FLOW_SCHEDULERS


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(SD, "Stable Diffusion 1.x/2.x",
           ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
           ("model.diffusion_model.input_blocks.",), default_side=512, size_multiple=8, default_scheduler="pndm",
           schedulers=None, guidance=(0.0, 50.0, 7.5), memory=Memory(2.5, 2.5, largest_share=0.75)),
    # Same layout as SD in a single file: told apart only by a config folder's model_index.json.
    Family(SD_UPSCALE, "Stable Diffusion x4 upscaler", ("StableDiffusionUpscalePipeline",), (), default_side=512,
           size_multiple=8, default_scheduler="pndm", schedulers=None, guidance=(0.0, 50.0, 7.5),
           memory=Memory(2.0, 3.0, largest_share=0.8)),
    Family(SD_DEPTH, "Stable Diffusion 2 depth", ("StableDiffusionDepth2ImgPipeline",), (), default_side=512,
           size_multiple=8, default_scheduler="pndm", schedulers=None, guidance=(0.0, 50.0, 7.5),
           memory=Memory(2.8, 2.5, largest_share=0.7)),
    Family(SDXL, "Stable Diffusion XL",
           ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
           ("conditioner.embedders.1.",), default_side=1024, size_multiple=8, default_scheduler="euler",
           schedulers=None, guidance=(0.0, 50.0, 5.0), memory=Memory(7.0, 3.0, largest_share=0.8),
           params=("original_width", "original_height", "crop_left", "crop_top")),
    Family(SD3, "Stable Diffusion 3.x",
           ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
           ("model.diffusion_model.joint_blocks.", "joint_blocks."), default_side=1024, size_multiple=16,
           default_scheduler="flow_euler", schedulers=FLOW_SCHEDULERS, guidance=(0.0, 30.0, 7.0),
           memory=Memory(16.0, 2.0, largest_share=0.67), params=("max_sequence_length",)),
    # Memory (half precision): the FLUX.1-dev transformer's 11.9B parameters (flux1-dev.safetensors is 23.8 GB
    # in bf16) 22.2 GiB, the T5-XXL encoder's 4.76B 8.9 GiB, CLIP-L and the VAE 0.4 GiB: 31.5 GiB;
    # working memory as SD3's. Estimated from parameter counts, not measured (docs/MODELS.md).
    Family(FLUX, "Flux.1", ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxKontextPipeline",
                            "FluxKontextInpaintPipeline"),
           ("double_blocks.", "model.diffusion_model.double_blocks.", "single_transformer_blocks."),
           default_side=1024, size_multiple=16, default_scheduler="flow_euler", schedulers=FLOW_SCHEDULERS,
           guidance=(0.0, 30.0, 3.5), memory=Memory(31.5, 2.0, largest_share=0.75),
           params=("max_sequence_length", "true_cfg_scale"), default_steps=28,
           distilled=Distilled("FLUX.1 schnell", steps=4, max_sequence_length=256)),
)}
"""Every family sdq runs, by name."""

UNSUPPORTED_CLASSES = {"FluxFill": "Flux.1 Fill", "FluxControl": "Flux.1 Control", "Flux2": "Flux.2",
                       "Chroma": "Chroma", "StableCascade": "Stable Cascade", "Kandinsky": "Kandinsky",
                       "PixArt": "PixArt", "Sana": "Sana", "Lumina": "Lumina", "HunyuanDiT": "Hunyuan-DiT",
                       "AuraFlow": "AuraFlow", "QwenImage": "Qwen-Image", "Wan": "Wan", "Cog": "CogView"}
"""`_class_name` prefixes of families sdq recognises but does not run (named in the refusal)."""

UNSUPPORTED_FILE_KEYS: dict[str, str] = {}
"""Tensor-name prefixes of single files of families sdq does not run."""

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
    # Full-size shapes with random weights (`workers.builtins.fullsize`): generated on first use, ~4-5 GB each.
    "builtin:sd15-shaped": SD,
    "builtin:sd2-768-shaped": SD,
}
"""Built-in model id -> its family."""

TINY_PREFIX = "builtin:tiny-"
"""Ids of the tiny built-ins (random weights, a few MB); other built-ins need their family's memory."""

BUILTIN_SIDES = {"builtin:tiny-sdxl": 256, "builtin:tiny-sd3": 256, "builtin:tiny-flux": 128,
                 "builtin:tiny-flux-schnell": 128, "builtin:tiny-flux-gguf": 128}
"""Default width and height of the tiny built-ins whose family's default is larger (their sample size
times 8: diffusers' own default for them); the others take their family's."""


class UnknownFamily(ValueError):
    """The model is of a family sdq does not run, or not a diffusion model sdq recognises."""


class UnsupportedFamily(UnknownFamily):
    """The model is of a family sdq recognises and does not run (Flux, PixArt, ...)."""


def family(name: str) -> Family:
    """The family called `name`; UnknownFamily naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownFamily(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def unsupported(class_name: str) -> str | None:
    """The name of the family sdq recognises but does not run that `class_name` belongs to, or None."""
    return next((title for prefix, title in UNSUPPORTED_CLASSES.items() if class_name.startswith(prefix)), None)


def from_class_name(class_name: str) -> str:
    """The family of a diffusers pipeline class name (a `model_index.json` `_class_name`)."""
    for fam in FAMILIES.values():
        if class_name in fam.class_names:
            return fam.name
    title = unsupported(class_name)
    if title is not None:
        raise UnsupportedFamily(f"{class_name} is a {title} model; sdq runs {', '.join(FAMILIES)} models")
    raise UnknownFamily(f"pipeline class {class_name!r} is not one sdq runs (families: {', '.join(FAMILIES)})")


def from_keys(keys: list[str]) -> str:
    """The family of a single-file checkpoint from its tensor names (original/LDM layout)."""
    # SD's marker (`input_blocks`) is in SDXL's files too: the newer families' own markers first.
    found = [f.name for f in FAMILIES.values()
             if f.name != SD and f.file_keys and any(k.startswith(f.file_keys) for k in keys)]
    if found:
        return found[0]
    for prefix, title in UNSUPPORTED_FILE_KEYS.items():
        if any(k.startswith(prefix) for k in keys):
            raise UnsupportedFamily(f"the checkpoint is a {title} model; sdq runs {', '.join(FAMILIES)} models")
    if any(k.startswith(FAMILIES[SD].file_keys) for k in keys):
        return SD
    raise UnknownFamily("the checkpoint's tensor names match no family sdq runs")


def from_folder(folder: Path) -> str:
    """The family of a diffusers folder, from its `model_index.json`."""
    index = Path(folder) / "model_index.json"
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError) as exc:
        raise UnknownFamily(f"{folder}: no readable model_index.json ({exc})") from None
    return from_class_name(class_name)


def from_file(file: Path) -> str:
    """The family of a single checkpoint: the local config folder beside it (`x.safetensors` ->
    `x/model_index.json`) when there is one, else a `.safetensors` file's tensor names."""
    file = Path(file)
    config = file.with_suffix("")
    if (config / "model_index.json").is_file():
        return from_folder(config)
    if file.suffix.lower() != ".safetensors":
        raise UnknownFamily(f"{file}: the family of a {file.suffix} file cannot be read without loading it; put "
                            f"its diffusers config folder beside it ({config}/model_index.json)")
    return from_keys(tensor_names(file, UnknownFamily))


def detect(path: Path) -> str:
    """The family of the model at `path`: a diffusers folder or a single checkpoint file."""
    path = Path(path)
    return from_folder(path) if path.is_dir() else from_file(path)


@dataclass(frozen=True)
class ModelInfo:
    """What the producer knows of a model before any worker loads it."""

    family: Family | None
    """None: not known here (a hub id or a pushed model; the worker finds out when it loads it)."""
    memory: Memory | None
    default_side: int | None
    distilled: bool = False
    """A timestep-distilled model of its family (`family` is then `Family.as_distilled()`)."""


BUILTIN_DISTILLED = frozenset({"builtin:tiny-flux-schnell"})
"""Built-ins that are timestep-distilled models."""

GUIDANCE_KEYS = ("guidance_in.", "model.diffusion_model.guidance_in.", "time_text_embed.guidance_embedder.")
"""Tensor-name prefixes of Flux's distilled-guidance input (dev has it, schnell does not)."""


def is_distilled(path: Path) -> bool:
    """Whether the Flux model at `path` is timestep-distilled (schnell-like), read from the model itself:
    its transformer's config says `guidance_embeds: false` (a folder, or a file's config folder beside
    it), or a single file's tensors have no guidance input."""
    path = Path(path)
    folder = path if path.is_dir() else path.with_suffix("")
    config = folder / "transformer" / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("guidance_embeds") is False
        except (OSError, ValueError):
            return False
    if path.is_file() and path.suffix.lower() == ".safetensors":
        return not any(k.startswith(GUIDANCE_KEYS) or ".guidance_in." in k for k in tensor_names(path, UnknownFamily))
    return False


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
                         model_id in BUILTIN_DISTILLED)
    path = Path(model_id).expanduser()
    if kind in ("folder", "file") and path.exists():
        marker = path / "model_index.json" if path.is_dir() else path
        st = marker.stat() if marker.exists() else path.stat()
        try:
            name, distilled = _detect_once(str(path), st.st_size, st.st_mtime_ns)
        except UnsupportedFamily:
            raise
        except UnknownFamily:
            return ModelInfo(None, None, None)
        fam = FAMILIES[name].as_distilled() if distilled else FAMILIES[name]
        memory = quantized(fam.memory, st.st_size / 2**30) if path.suffix.lower() == ".gguf" else fam.memory
        return ModelInfo(fam, memory, fam.default_side, distilled)
    return ModelInfo(None, None, None)


SHARE_MARGIN = 0.05
"""What `Memory.largest_share` adds to the largest component's share of the parameters."""


def quantized(memory: Memory, file_gb: float) -> Memory:
    """The need of a model whose denoiser (its largest component) is a quantized file of `file_gb` GiB: the
    other components as before, plus the file as stored (a GGUF transformer is dequantized a layer at a
    time). Counted at the half-precision rate, so an fp32 worker's need is overstated."""
    rest = memory.weights_gb * (1 - (memory.largest_share - SHARE_MARGIN))
    weights = round(rest + file_gb, 2)
    return replace(memory, weights_gb=weights, largest_share=round(min(1.0, file_gb / weights + SHARE_MARGIN), 2))


@lru_cache(maxsize=256)
def _detect_once(path: str, size: int, mtime_ns: int) -> tuple[str, bool]:
    """`detect` (and, for a family with a distilled variant, `is_distilled`), once per version of the file
    it reads (a checkpoint's header is read once, not per submit)."""
    name = detect(Path(path))
    return name, FAMILIES[name].distilled is not None and is_distilled(Path(path))


def required_gb(requires: dict, dtype: str, pixels: int, cast_from: str | None = None) -> float | None:
    """Device memory (GiB) an item of `pixels` output pixels needs on a `dtype` worker (that casts
    `cast_from` weight files at load: `load_cast`): the larger of the caller's `min_memory_gb` and the
    model family's need (`requires.memory`); None: no need stated."""
    needs = [float(requires["min_memory_gb"])] if requires.get("min_memory_gb") else []
    if requires.get("memory"):
        needs.append(Memory.from_record(requires["memory"]).need_gb(dtype, pixels, cast_from))
    return max(needs) if needs else None
