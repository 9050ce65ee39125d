"""Model families: what a model is, read from the model itself, and what each family needs.

Torch-free: the producer checks a job against its model's family at submit (when it can read the
model: built-ins by id, allowlisted local folders and files), the worker loads the family's
pipeline classes and refuses items whose memory need its device cannot meet.

A family is picked from a diffusers folder's `model_index.json` (`_class_name`, the same key
diffusers' AutoPipeline reads) or, for a single `.safetensors` checkpoint, from the tensor names
in its header (`conditioner.embedders.1.` only SDXL has, `joint_blocks.` only SD3's MMDiT,
`double_blocks.` only Flux's transformer (`single_stream_modulation.` only Flux.2's), `txt_norm.` Qwen-Image's,
`layers.0.adaLN_modulation.0.` only Z-Image's).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from sdq.memory import Memory
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
FLUX2 = "flux2"
"""Flux.2 dev: a 32B double/single-stream transformer with distilled guidance, a Mistral3 (Mistral Small 3.1, 24B)
text encoder, a 32-channel VAE, flow matching; reference images as input (edit)."""
FLUX2_KLEIN = "flux2-klein"
"""Flux.2 Klein (4B, 9B; base and step-distilled): Flux.2's transformer without the guidance input (base models
guide with real classifier-free guidance), a Qwen3 text encoder, the Flux.2 VAE."""

FLUX2_FILE_KEYS = ("single_stream_modulation.", "model.diffusion_model.single_stream_modulation.")
"""Tensor-name prefixes of Flux.2 transformers (its BFL files also have Flux.1's `double_blocks.`)."""
FLUX2_GUIDANCE_KEYS = ("guidance_in.", "guidance_embedder.")
"""Tensor-name fragments of Flux.2 dev's distilled-guidance input (BFL and diffusers names); Klein has none."""
QWEN_IMAGE = "qwen-image"
"""Qwen-Image: a 20B MMDiT over 2x2-packed latents of a 16-channel causal VAE, a Qwen2.5-VL-7B text encoder, flow
matching; no guidance input: real classifier-free guidance (`true_cfg_scale`) against a negative prompt."""
QWEN_IMAGE_EDIT = "qwen-image-edit"
"""Qwen-Image-Edit: Qwen-Image's architecture trained to change an init image as an instruction says; its text
encoder also sees the image (through a Qwen2-VL processor, which a plain Qwen-Image model does not ship). Told
apart from Qwen-Image only by a folder's `model_index.json` (the transformers' tensor names are the same)."""

Z_IMAGE = "z-image"
"""Z-Image and Z-Image-Turbo: a single-stream transformer over the caption and image tokens, a Qwen3 text
encoder, Flux's 16-channel VAE, flow matching; classifier-free guidance above `guidance_scale` 0."""
WAN = "wan"
"""Wan 2.1/2.2 video (text- and image-to-video): a 3D transformer, UMT5 (tokens), a causal 3D VAE, flow matching."""
LTX = "ltx"
"""LTX-Video: a 3D transformer, T5 (tokens), a 32x/8x-compressing video VAE, flow matching."""

FLOW_SCHEDULERS = ("flow_euler",)
"""Schedulers of flow-matching (rectified-flow) models; noise-prediction families cannot use them."""

@dataclass(frozen=True)
class Distilled:
    """A timestep-distilled variant (FLUX.1 schnell, Z-Image-Turbo): few steps, run without guidance, its own
    text length limit."""

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
    negative_prompt: bool = True
    """Its pipelines take a negative prompt (Flux.2's do not)."""
    file_needs: tuple[str, ...] = ()
    """Fragments of tensor names of which a single file of the family has at least one (none: no such rule)."""
    file_lacks: tuple[str, ...] = ()
    """Fragments of tensor names no single file of the family has (a newer family's files carry its markers too)."""
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
           distilled=Distilled("FLUX.1 schnell", steps=4, max_sequence_length=256), file_lacks=FLUX2_FILE_KEYS),
    # Memory (half precision), estimated from parameter counts, not measured (docs/MODELS.md): FLUX.2 dev's
    # transformer ~32B parameters 59.6 GiB, its Mistral Small 3.1 encoder ~24B 44.7 GiB, the VAE 0.2 GiB: 104.5 GiB.
    Family(FLUX2, "Flux.2 dev", ("Flux2Pipeline",), FLUX2_FILE_KEYS, default_side=1024, size_multiple=16,
           default_scheduler="flow_euler", schedulers=FLOW_SCHEDULERS, guidance=(0.0, 30.0, 4.0),
           memory=Memory(104.5, 2.0, largest_share=0.62), params=("max_sequence_length",), default_steps=50,
           negative_prompt=False, file_needs=FLUX2_GUIDANCE_KEYS),
    # Memory of the larger Klein, 9B (a model's folder does not say which it is): transformer ~9B 16.8 GiB, Qwen3-8B
    # encoder ~8.2B 15.3 GiB, VAE 0.2 GiB: 32.3 GiB (Klein 4B: ~4B + Qwen3-4B, ~15.2 GiB). Estimated, not measured.
    Family(FLUX2_KLEIN, "Flux.2 Klein", ("Flux2KleinPipeline", "Flux2KleinInpaintPipeline"), FLUX2_FILE_KEYS,
           default_side=1024, size_multiple=16, default_scheduler="flow_euler", schedulers=FLOW_SCHEDULERS,
           guidance=(0.0, 30.0, 4.0), memory=Memory(32.3, 2.0, largest_share=0.57), params=("max_sequence_length",),
           default_steps=50, negative_prompt=False, file_lacks=FLUX2_GUIDANCE_KEYS,
           distilled=Distilled("FLUX.2 Klein distilled", steps=4, max_sequence_length=512)),
    # Memory (half precision): the transformer's ~20.4B parameters 38.1 GiB, the Qwen2.5-VL-7B encoder's ~8.3B
    # (vision tower included) 15.4 GiB, the VAE 0.2 GiB: 53.7 GiB; working memory as SD3's. Estimated from
    # parameter counts, not measured (docs/MODELS.md). 50 steps and 1024 px as diffusers' own defaults.
    Family(QWEN_IMAGE, "Qwen-Image", ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline"),
           ("txt_norm.", "model.diffusion_model.txt_norm."), default_side=1024, size_multiple=16,
           default_scheduler="flow_euler", schedulers=FLOW_SCHEDULERS, guidance=(0.0, 0.0, 0.0),
           memory=Memory(53.7, 2.0, largest_share=0.71), params=("max_sequence_length", "true_cfg_scale"),
           default_steps=50),
    Family(QWEN_IMAGE_EDIT, "Qwen-Image-Edit", ("QwenImageEditPipeline",), (), default_side=1024, size_multiple=16,
           default_scheduler="flow_euler", schedulers=FLOW_SCHEDULERS, guidance=(0.0, 0.0, 0.0),
           memory=Memory(53.7, 2.0, largest_share=0.71), params=("max_sequence_length", "true_cfg_scale"),
           default_steps=50),
    # Memory (half precision): the transformer's ~6.15B parameters 11.5 GiB, the Qwen3-4B encoder's 4.02B 7.5 GiB,
    # the VAE 0.2 GiB: 19.2 GiB; working memory as SD3's. Estimated from parameter counts, not measured.
    # Turbo (8 steps, no guidance) has Z-Image's shapes: told apart by its name (`sdq.modelinfo.is_turbo`).
    Family(Z_IMAGE, "Z-Image", ("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline"),
           ("layers.0.adaLN_modulation.0.", "model.diffusion_model.layers.0.adaLN_modulation.0.", "all_x_embedder."),
           default_side=1024, size_multiple=16, default_scheduler="flow_euler", schedulers=FLOW_SCHEDULERS,
           guidance=(0.0, 30.0, 5.0), memory=Memory(19.2, 2.0, largest_share=0.65), params=("max_sequence_length",),
           default_steps=50, max_tokens=512, distilled=Distilled("Z-Image-Turbo", steps=8, max_sequence_length=512)),
    # Video (sizes and frame rules in `sdq.videos`). Memory (half precision, estimated from parameter counts,
    # not measured): Wan 2.1 14B's transformer 26 GiB, UMT5-XXL 10.6 GiB, VAE and CLIP 1.3 GiB; working
    # memory per megapixel of each frame (a job's need multiplies it by its frames: `producer.planning.family.with_frames`).
    Family(WAN, "Wan 2.1/2.2", ("WanPipeline", "WanImageToVideoPipeline"), (), default_side=480, size_multiple=16,
           default_scheduler="unipc", schedulers=("unipc",), guidance=(0.0, 30.0, 5.0),
           memory=Memory(38.0, 0.4, largest_share=0.75), params=("frames", "fps"), default_steps=50),
    # LTX-Video 0.9 (2B): transformer 3.6 GiB, T5-XXL 8.9 GiB, VAE 0.8 GiB; half Wan's working memory per frame.
    Family(LTX, "LTX-Video", ("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline"), (), default_side=512,
           size_multiple=32, default_scheduler="flow_euler", schedulers=FLOW_SCHEDULERS, guidance=(0.0, 30.0, 3.0),
           memory=Memory(13.3, 0.2, largest_share=0.7), params=("frames", "fps"), default_steps=50),
)}
"""Every family sdq runs, by name."""

UNSUPPORTED_CLASSES = {"FluxFill": "Flux.1 Fill", "FluxControl": "Flux.1 Control", "Flux2KleinKV": "Flux.2 Klein KV",
                       "Chroma": "Chroma", "StableCascade": "Stable Cascade", "Kandinsky": "Kandinsky",
                       "PixArt": "PixArt", "Sana": "Sana", "Lumina": "Lumina", "HunyuanDiT": "Hunyuan-DiT",
                       "AuraFlow": "AuraFlow", "QwenImage": "Qwen-Image variant", "Cog": "CogView"}
"""`_class_name` prefixes of families sdq recognises but does not run (named in the refusal)."""

UNSUPPORTED_FILE_KEYS: dict[str, str] = {}
"""Tensor-name prefixes of single files of families sdq does not run."""

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
    found = [f.name for f in FAMILIES.values() if f.name != SD and _file_of(f, keys)]
    if found:
        return found[0]
    for prefix, title in UNSUPPORTED_FILE_KEYS.items():
        if any(k.startswith(prefix) for k in keys):
            raise UnsupportedFamily(f"the checkpoint is a {title} model; sdq runs {', '.join(FAMILIES)} models")
    if any(k.startswith(FAMILIES[SD].file_keys) for k in keys):
        return SD
    raise UnknownFamily("the checkpoint's tensor names match no family sdq runs")


def _file_of(fam: Family, keys: list[str]) -> bool:
    """Whether tensor names `keys` are a single file of `fam`: its markers, what it needs, nothing it lacks."""
    return (bool(fam.file_keys) and any(k.startswith(fam.file_keys) for k in keys)
            and (not fam.file_needs or any(n in k for k in keys for n in fam.file_needs))
            and not any(n in k for k in keys for n in fam.file_lacks))


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
