"""Pipelines and schedulers as one table: what each pipeline needs, checks, writes and counts.

Torch-free: the producer validates a request with it, the worker builds its diffusers call from
it. A pipeline is one `PipelineSpec` in `SPECS`; no other module compares pipeline names, it
asks the spec (`spec(name).scale`, `.images`, `.param_names` ...). Adding a pipeline means adding
its entry here, its worker call (`workers.running.generation`) when the generic one does not fit, and its
tests. Request options that change how a pipeline runs (adapters, a second pass ...) are the other
table, `sdq.options`: each says which pipelines take it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdq import defaults, families, videos
from sdq.families import FLUX, SD, SD3, SD_DEPTH, SD_UPSCALE, SDXL
from sdq.families import QWEN_IMAGE, QWEN_IMAGE_EDIT, Z_IMAGE
from sdq.families import FLUX2, FLUX2_KLEIN
from sdq.families import LTX, WAN
from sdq.params import ImageInput, Param


@dataclass(frozen=True)
class PipelineSpec:
    """One pipeline: its inputs, parameters, output size, work count, infotext and diffusers classes."""

    name: str
    classes: dict[str, str]
    """Model family -> diffusers pipeline class name (families without an entry cannot run it)."""
    images: tuple[ImageInput, ...] = ()
    params: tuple[Param, ...] = ()
    scale: int = 1
    """Output side / input side (4 for the x4 upscaler)."""
    default_side: int | None = None
    """Width and height when neither the request nor an init image gives them (None: `defaults.WIDTH/HEIGHT`)."""
    steps_scaled_by: str | None = None
    """Parameter the denoising loop's length is multiplied by (img2img runs `steps * strength` steps)."""
    passes_size: bool = False
    """The diffusers call takes `width`/`height` (else it works at the size of the image it is given)."""
    legacy_callback: bool = False
    """The diffusers class only has the old `callback(step, t, latents)` hook, not `callback_on_step_end`."""
    limit_batch: bool = False
    """Images per call are capped by the worker's `--upscale-batch` (a VAE that decodes large outputs in fp32)."""
    video: bool = False
    """It makes a clip of `frames` frames per item (an MP4 and a poster PNG), not one image."""
    doc: str = ""

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the pipeline's own parameters."""
        return tuple(p.name for p in self.params)

    @property
    def image_fields(self) -> tuple[str, ...]:
        """Request fields naming the uploads the pipeline needs."""
        return tuple(i.field for i in self.images)

    @property
    def needs_image(self) -> bool:
        """The pipeline starts from an uploaded image (init image) rather than noise."""
        return bool(self.images)

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """Size of the image made from `width` x `height` (the input size when `scale` is not 1)."""
        return width * self.scale, height * self.scale

    def first_loop(self, params: dict[str, Any]) -> int:
        """Denoising steps of the pipeline's own pass (img2img: `steps * strength`)."""
        if self.steps_scaled_by is None:
            return int(params["steps"])
        return max(1, int(params["steps"] * params[self.steps_scaled_by]))

    def call_kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments of the diffusers call taken from the item's parameters (not the images)."""
        out = {p.name: params[p.name] for p in self.params}
        if self.passes_size:
            out.update(height=params["height"], width=params["width"])
        return out

    def infotext_fields(self, params: dict[str, Any]) -> dict[str, Any]:
        """Infotext fields of the pipeline's own parameters, in declaration order."""
        return {p.infotext: params.get(p.name) for p in self.params if p.infotext}

    def input_size(self, params: dict[str, Any]) -> str | None:
        """The `Input size` infotext field: the requested size when the output is scaled, else None."""
        return f"{params['width']}x{params['height']}" if self.scale != 1 else None

    def class_for(self, family: str = SD) -> str | None:
        """The diffusers class that runs this pipeline for a model of `family` (None: no such pipeline)."""
        return self.classes.get(family)


STRENGTH = Param("strength", float, 0, 1, defaults.STRENGTH, infotext="Denoising strength",
                 doc="how much the init image is changed (0 keeps it, 1 ignores it)")
NOISE_LEVEL = Param("noise_level", int, 0, 350, defaults.NOISE_LEVEL, infotext="Noise level",
                    doc="noise the x4 upscaler adds to its input (its `max_noise_level` is 350)")
INIT_IMAGE = ImageInput("init_image", "image", infotext="Init image", sets_size=True)
MASK_IMAGE = ImageInput("mask_image", "mask_image", mode="L", infotext="Mask image", same_size_as="init_image")

SPECS: dict[str, PipelineSpec] = {s.name: s for s in (
    PipelineSpec("txt2img", {SD: "StableDiffusionPipeline", SDXL: "StableDiffusionXLPipeline",
                             SD3: "StableDiffusion3Pipeline", FLUX: "FluxPipeline",
                             QWEN_IMAGE: "QwenImagePipeline", FLUX2: "Flux2Pipeline", FLUX2_KLEIN: "Flux2KleinPipeline",
                             Z_IMAGE: "ZImagePipeline"}, passes_size=True,
                 doc="an image from a prompt"),
    PipelineSpec("img2img", {SD: "StableDiffusionImg2ImgPipeline", SDXL: "StableDiffusionXLImg2ImgPipeline",
                             SD3: "StableDiffusion3Img2ImgPipeline", FLUX: "FluxImg2ImgPipeline",
                             QWEN_IMAGE: "QwenImageImg2ImgPipeline",
                             Z_IMAGE: "ZImageImg2ImgPipeline"},
                 images=(INIT_IMAGE,), params=(STRENGTH,), steps_scaled_by="strength",
                 doc="a prompt applied to an init image"),
    PipelineSpec("upscale", {SD_UPSCALE: "StableDiffusionUpscalePipeline"}, images=(INIT_IMAGE,), params=(NOISE_LEVEL,),
                 scale=4, default_side=defaults.UPSCALE_SIDE, legacy_callback=True, limit_batch=True,
                 doc="the init image at 4x its size (width and height give the input size)"),
    PipelineSpec("depth2img", {SD_DEPTH: "StableDiffusionDepth2ImgPipeline"}, images=(INIT_IMAGE,), params=(STRENGTH,),
                 steps_scaled_by="strength", doc="img2img that keeps the init image's depth map"),
    PipelineSpec("inpaint", {SD: "StableDiffusionInpaintPipeline", SDXL: "StableDiffusionXLInpaintPipeline",
                             FLUX: "FluxInpaintPipeline",
                             QWEN_IMAGE: "QwenImageInpaintPipeline", FLUX2_KLEIN: "Flux2KleinInpaintPipeline",
                             Z_IMAGE: "ZImageInpaintPipeline"},
                 images=(INIT_IMAGE, MASK_IMAGE), params=(STRENGTH,), steps_scaled_by="strength", passes_size=True,
                 doc="the white part of a mask repainted over the init image (the mask is made single-channel)"),
    PipelineSpec("edit", {FLUX: "FluxKontextPipeline",
                          QWEN_IMAGE_EDIT: "QwenImageEditPipeline",
                          FLUX2: "Flux2Pipeline", FLUX2_KLEIN: "Flux2KleinPipeline"}, images=(INIT_IMAGE,), passes_size=True,
                 doc="the init image changed as the prompt says (an instruction: \"make the sky red\")"),
    PipelineSpec("txt2video", {WAN: "WanPipeline", LTX: "LTXPipeline"}, passes_size=True, video=True,
                 doc="a video clip from a prompt (an MP4 of `frames` frames at `fps`, and its first frame as PNG)"),
    PipelineSpec("img2video", {WAN: "WanImageToVideoPipeline", LTX: "LTXImageToVideoPipeline"}, images=(INIT_IMAGE,),
                 passes_size=True, video=True, doc="a video clip starting from the init image (its first frame)"),
)}
"""Every pipeline the API knows, by name."""

PIPELINES = tuple(SPECS)
"""Pipeline names, in table order."""


def spec(name: str) -> PipelineSpec:
    """The spec of pipeline `name`; ValueError naming the known ones otherwise."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown pipeline {name!r}; known: {', '.join(SPECS)}") from None


SIDE_LIMIT = 8192
"""Largest `original_width`/`original_height` (SDXL was trained on sizes up to ~4096)."""

FAMILY_PARAMS: dict[str, Param] = {p.name: p for p in (
    Param("original_width", int, 8, SIDE_LIMIT, None, infotext="Original width",
          doc="SDXL size conditioning (diffusers' `original_size`): the width the model is told the "
              "training picture had; default: the image's width"),
    Param("original_height", int, 8, SIDE_LIMIT, None, infotext="Original height",
          doc="SDXL size conditioning: the height of `original_size`; default: the image's height"),
    Param("crop_left", int, 0, SIDE_LIMIT, None, infotext="Crop left",
          doc="SDXL crop conditioning (diffusers' `crops_coords_top_left`): left edge; default 0"),
    Param("crop_top", int, 0, SIDE_LIMIT, None, infotext="Crop top",
          doc="SDXL crop conditioning: top edge; default 0"),
    Param("max_sequence_length", int, 1, 512, 256, infotext="Max sequence length",
          doc="SD3 and Flux: prompt tokens of the T5 encoder (diffusers allows at most 512, FLUX.1 schnell-type "
              "models 256; default 256); Qwen-Image: of its Qwen2.5-VL encoder, after its prompt template; Z-Image: "
              "of the Qwen3 encoder, its chat template included (at most 512)"),
    Param("true_cfg_scale", float, 1, 30, None, infotext="True CFG scale",
          doc="Flux: real classifier-free guidance against the negative prompt (a second transformer pass per "
              "step; needs a negative prompt, and a negative prompt needs it above 1); `guidance_scale` is "
              "the distilled guidance the model takes as an input. Qwen-Image: its only guidance, same rules "
              "(the model card uses 4 with a negative prompt of one space)"),
    Param("frames", int, 1, videos.MAX_FRAMES, None, infotext="Frames",
          doc="video: frames of the clip (Wan 4k+1, LTX-Video 8k+1; default: the family's, e.g. 81 for Wan)"),
    Param("fps", float, videos.MIN_FPS, videos.MAX_FPS, None, infotext="FPS",
          doc="video: frames per second of the MP4 (LTX-Video also conditions on it; default: the family's)"),
)}
"""Parameters only some model families take (`families.Family.params` names them); a family's items
get its defaults at submit, other families' items never carry them."""


def _sdxl_kwargs(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if p.get("original_width") is not None or p.get("original_height") is not None:
        out["original_size"] = (p.get("original_height") or p["height"], p.get("original_width") or p["width"])
    if p.get("crop_left") is not None or p.get("crop_top") is not None:
        out["crops_coords_top_left"] = (p.get("crop_top") or 0, p.get("crop_left") or 0)
    return out


def _sd3_kwargs(p: dict[str, Any]) -> dict[str, Any]:
    sized = {"height": p["height"], "width": p["width"]}  # its image pipelines also resize to these
    return {**sized, "max_sequence_length": p["max_sequence_length"]} if p.get("max_sequence_length") else sized


def _flux_kwargs(p: dict[str, Any]) -> dict[str, Any]:
    true_cfg = {"true_cfg_scale": p["true_cfg_scale"]} if p.get("true_cfg_scale") is not None else {}
    return {**_sd3_kwargs(p), **true_cfg}


def _qwen_kwargs(p: dict[str, Any]) -> dict[str, Any]:
    # No guidance input (diffusers warns at any guidance_scale); true CFG off unless asked (its default is 4.0).
    return {**_sd3_kwargs(p), "true_cfg_scale": p.get("true_cfg_scale") or 1.0, "guidance_scale": None}


def _video_kwargs(family: str, p: dict[str, Any]) -> dict[str, Any]:
    rule = videos.rules(family)
    out = {"num_frames": p.get("frames") or rule.default_frames, "output_type": "np"}
    return out | ({"frame_rate": p.get("fps") or rule.default_fps} if family == LTX else {})


FAMILY_KWARGS = {SDXL: _sdxl_kwargs, SD3: _sd3_kwargs, FLUX: _flux_kwargs,
                 QWEN_IMAGE: _qwen_kwargs, QWEN_IMAGE_EDIT: _qwen_kwargs,
                 Z_IMAGE: _sd3_kwargs,
                 WAN: lambda p: _video_kwargs(WAN, p),
                 LTX: lambda p: _video_kwargs(LTX, p),
                 }
"""Family -> the keyword arguments of its diffusers calls made from the item's family parameters."""
FAMILY_KWARGS.update({FLUX2: _sd3_kwargs, FLUX2_KLEIN: _sd3_kwargs})  # Flux.2: size and max_sequence_length

CLASS_KWARGS = {"FluxKontextPipeline": lambda p: {"max_area": p["width"] * p["height"], "_auto_resize": False}}
"""Diffusers class -> keyword arguments its call needs beyond the table's. Kontext otherwise rescales the
output to a 1024x1024 area and the init image to one of its preferred sizes: it gets the requested size,
and the init image as the worker fitted it to that size."""


REFERENCE_CLASSES = frozenset({"Flux2Pipeline", "Flux2KleinPipeline"})
"""Diffusers classes whose `image` is a list of reference images every prompt of the call sees (Flux.2's edit):
the worker calls them with one prompt and its own init image at a time."""


def class_kwargs(class_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The extra keyword arguments of a call of diffusers class `class_name` (none for most)."""
    make = CLASS_KWARGS.get(class_name)
    return make(params) if make is not None else {}


def base_class(family: str) -> str:
    """The diffusers class a model of `family` is loaded as when nothing names one (a single file
    without a config folder): the family's class in the first table row that has one (text-to-image,
    as diffusers' AutoPipelineForText2Image picks, for the families that have it)."""
    return next(s.classes[family] for s in SPECS.values() if family in s.classes)


def family_kwargs(family: str, params: dict[str, Any]) -> dict[str, Any]:
    """The diffusers call's keyword arguments for `family`'s own parameters (none for SD)."""
    make = FAMILY_KWARGS.get(family)
    return make(params) if make is not None else {}


def family_params(family: str) -> tuple[Param, ...]:
    """The parameters `family` takes beyond the pipelines' own."""
    return tuple(FAMILY_PARAMS[name] for name in families.family(family).params)


def family_infotext(params: dict[str, Any]) -> dict[str, Any]:
    """Infotext fields of the family parameters an item carries (left out when unset)."""
    return {p.infotext: params[p.name] for p in FAMILY_PARAMS.values() if params.get(p.name) is not None}


def all_params() -> dict[str, Param]:
    """Every pipeline- or family-specific parameter by name (a parameter shared by pipelines is one entry)."""
    out: dict[str, Param] = dict(FAMILY_PARAMS)
    for s in SPECS.values():
        for p in s.params:
            if out.setdefault(p.name, p) != p:
                raise ValueError(f"parameter {p.name!r} is declared twice with different checks")
    return out


def all_images() -> dict[str, ImageInput]:
    """Every image input by request field."""
    return {i.field: i for s in SPECS.values() for i in s.images}


def pipelines_for(family: str) -> tuple[str, ...]:
    """The pipelines a model of `family` runs: the specs with a class for it."""
    return tuple(name for name, s in SPECS.items() if family in s.classes)


def family_of_class(class_name: str) -> str | None:
    """The family a diffusers pipeline class belongs to (a model's `_class_name`), or None."""
    return next((fam for s in SPECS.values() for fam, cls in s.classes.items() if cls == class_name), None)


def pipeline_classes() -> set[str]:
    """Every diffusers pipeline class some spec names (the worker imports them ahead of the first item)."""
    return {c for s in SPECS.values() for c in s.classes.values()}


@dataclass(frozen=True)
class Scheduler:
    """A scheduler name accepted in `params.scheduler`: its diffusers class and its A1111 sampler name."""

    name: str
    diffusers_class: str
    sampler: str


SCHEDULERS: dict[str, Scheduler] = {s.name: s for s in (
    Scheduler("pndm", "PNDMScheduler", "PNDM"),
    Scheduler("plms", "PNDMScheduler", "PLMS"),
    Scheduler("ddim", "DDIMScheduler", "DDIM"),
    Scheduler("euler", "EulerDiscreteScheduler", "Euler"),
    Scheduler("euler_a", "EulerAncestralDiscreteScheduler", "Euler a"),
    Scheduler("dpmpp_2m", "DPMSolverMultistepScheduler", "DPM++ 2M"),
    Scheduler("lms", "LMSDiscreteScheduler", "LMS"),
    Scheduler("ddpm", "DDPMScheduler", "DDPM"),
    Scheduler("heun", "HeunDiscreteScheduler", "Heun"),
    Scheduler("unipc", "UniPCMultistepScheduler", "UniPC"),
    Scheduler("flow_euler", "FlowMatchEulerDiscreteScheduler", "FlowMatch Euler"),  # flow-matching families only
)}
"""Every scheduler name accepted in `params.scheduler`; the worker builds its class with
`from_config` of the model's own scheduler config."""

SAMPLER_NAMES = {s.name: s.sampler for s in SCHEDULERS.values()}
"""Scheduler name -> the sampler name A1111 infotext writes for it."""
