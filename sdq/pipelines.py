"""Pipelines and schedulers as one table: what each pipeline needs, checks, writes and counts.

Torch-free: the producer validates a request with it, the worker builds its diffusers call from
it. A pipeline is one `PipelineSpec` in `SPECS`; no other module compares pipeline names, it
asks the spec (`spec(name).scale`, `.images`, `.param_names` ...). Adding a pipeline means adding
its entry here, its worker call (`workers.generation`) when the generic one does not fit, and its
tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdq import defaults, families
from sdq.families import FLUX, SD, SD3, SD_DEPTH, SD_UPSCALE, SDXL
from sdq.params import AdapterParam, ImageInput, Param


@dataclass(frozen=True)
class ControlNetUse:
    """How a pipeline runs with `params.controlnet`: the diffusers class per family and the keyword the
    control image is passed as (`image` where the pipeline has no init image, else `control_image`)."""

    classes: dict[str, str]
    kwarg: str = "control_image"


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
    adapters: tuple[AdapterParam, ...] = ()
    """Adapter list parameters it takes (`params.loras`)."""
    controlnet: ControlNetUse | None = None
    """The classes that run it with a ControlNet (None: `params.controlnet` is refused)."""
    hires_pass: str | None = None
    """The pipeline that makes the hires fix's second pass at the larger size (None: `params.hires` is refused)."""
    doc: str = ""

    def takes_adapters(self, name: str) -> bool:
        """Whether the pipeline takes the adapter list parameter `name` (e.g. `loras`)."""
        return any(a.name == name for a in self.adapters)

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

    def loop_steps(self, params: dict[str, Any]) -> int:
        """How many denoising steps the pipeline really runs (both passes with a hires fix)."""
        return self.first_loop(params) + hires_loop(params)

    def final_size(self, params: dict[str, Any]) -> tuple[int, int]:
        """Size of the image an item makes: `output_size`, then the hires fix's larger size."""
        return hires_size(params, *self.output_size(params["width"], params["height"]))

    def work(self, params: dict[str, Any]) -> float:
        """Work of one item in megapixel-steps: each pass's steps times its output megapixels."""
        w, h = self.output_size(params["width"], params["height"])
        big_w, big_h = self.final_size(params)
        return (self.first_loop(params) * w * h + hires_loop(params) * big_w * big_h) / 1e6

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

    def class_for(self, family: str = SD, controlnet: bool = False) -> str | None:
        """The diffusers class that runs this pipeline for a model of `family`, with a ControlNet when
        `controlnet` (None: no such pipeline)."""
        if controlnet:
            return self.controlnet.classes.get(family) if self.controlnet else None
        return self.classes.get(family)


STRENGTH = Param("strength", float, 0, 1, defaults.STRENGTH, infotext="Denoising strength",
                 doc="how much the init image is changed (0 keeps it, 1 ignores it)")
NOISE_LEVEL = Param("noise_level", int, 0, 350, defaults.NOISE_LEVEL, infotext="Noise level",
                    doc="noise the x4 upscaler adds to its input (its `max_noise_level` is 350)")
LORAS = AdapterParam("loras", defaults.MAX_LORAS, defaults.LORA_SCALE_MAX, defaults.LORA_SCALE,
                     infotext="Lora hashes",
                     doc="LoRA adapters applied for this job: `[{\"name\": ..., \"scale\": ...}]`")
INIT_IMAGE = ImageInput("init_image", "image", infotext="Init image", sets_size=True)
MASK_IMAGE = ImageInput("mask_image", "mask_image", mode="L", infotext="Mask image", same_size_as="init_image")

SPECS: dict[str, PipelineSpec] = {s.name: s for s in (
    PipelineSpec("txt2img", {SD: "StableDiffusionPipeline", SDXL: "StableDiffusionXLPipeline",
                             SD3: "StableDiffusion3Pipeline", FLUX: "FluxPipeline"}, passes_size=True,
                 controlnet=ControlNetUse({SD: "StableDiffusionControlNetPipeline",
                                           SDXL: "StableDiffusionXLControlNetPipeline"}, kwarg="image"),
                 hires_pass="img2img", adapters=(LORAS,), doc="an image from a prompt"),
    PipelineSpec("img2img", {SD: "StableDiffusionImg2ImgPipeline", SDXL: "StableDiffusionXLImg2ImgPipeline",
                             SD3: "StableDiffusion3Img2ImgPipeline", FLUX: "FluxImg2ImgPipeline"},
                 images=(INIT_IMAGE,), params=(STRENGTH,),
                 steps_scaled_by="strength", controlnet=ControlNetUse({SD: "StableDiffusionControlNetImg2ImgPipeline",
                                                                       SDXL: "StableDiffusionXLControlNetImg2ImgPipeline"}),
                 adapters=(LORAS,), doc="a prompt applied to an init image"),
    PipelineSpec("upscale", {SD_UPSCALE: "StableDiffusionUpscalePipeline"}, images=(INIT_IMAGE,), params=(NOISE_LEVEL,),
                 scale=4, default_side=defaults.UPSCALE_SIDE, legacy_callback=True, limit_batch=True,
                 doc="the init image at 4x its size (width and height give the input size)"),
    PipelineSpec("depth2img", {SD_DEPTH: "StableDiffusionDepth2ImgPipeline"}, images=(INIT_IMAGE,), params=(STRENGTH,),
                 steps_scaled_by="strength", doc="img2img that keeps the init image's depth map"),
    PipelineSpec("inpaint", {SD: "StableDiffusionInpaintPipeline", SDXL: "StableDiffusionXLInpaintPipeline",
                             FLUX: "FluxInpaintPipeline"},
                 images=(INIT_IMAGE, MASK_IMAGE), params=(STRENGTH,), steps_scaled_by="strength", passes_size=True,
                 controlnet=ControlNetUse({SD: "StableDiffusionControlNetInpaintPipeline",
                                           SDXL: "StableDiffusionXLControlNetInpaintPipeline"}),
                 adapters=(LORAS,),
                 doc="the white part of a mask repainted over the init image (the mask is made single-channel)"),
    PipelineSpec("edit", {FLUX: "FluxKontextPipeline"}, images=(INIT_IMAGE,), passes_size=True,
                 doc="the init image changed as the prompt says (an instruction: \"make the sky red\")"),
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
              "models 256; default 256)"),
    Param("true_cfg_scale", float, 1, 30, None, infotext="True CFG scale",
          doc="Flux: real classifier-free guidance against the negative prompt (a second transformer pass per "
              "step; needs a negative prompt, and a negative prompt needs it above 1); `guidance_scale` is "
              "the distilled guidance the model takes as an input"),
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


FAMILY_KWARGS = {SDXL: _sdxl_kwargs, SD3: _sd3_kwargs, FLUX: _flux_kwargs}
"""Family -> the keyword arguments of its diffusers calls made from the item's family parameters."""

CLASS_KWARGS = {"FluxKontextPipeline": lambda p: {"max_area": p["width"] * p["height"], "_auto_resize": False}}
"""Diffusers class -> keyword arguments its call needs beyond the table's. Kontext otherwise rescales the
output to a 1024x1024 area and the init image to one of its preferred sizes: it gets the requested size,
and the init image as the worker fitted it to that size."""


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


def all_adapters() -> dict[str, AdapterParam]:
    """Every adapter list parameter by name."""
    return {a.name: a for s in SPECS.values() for a in s.adapters}


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
    return {c for s in SPECS.values() for c in (*s.classes.values(), *(s.controlnet.classes.values()
                                                                       if s.controlnet else ()))}


HIRES_PARAMS: tuple[Param, ...] = (
    Param("scale", float, 1, 4, defaults.HIRES_SCALE, infotext="Hires upscale",
          doc="the second pass's size over the first's (rounded down to a multiple of 8)"),
    Param("strength", float, 0.01, 1, defaults.HIRES_STRENGTH, infotext="Denoising strength",
          doc="how much the second pass changes the enlarged image"),
    Param("steps", int, 1, defaults.MAX_STEPS, None, infotext="Hires steps",
          doc="the second pass's `num_inference_steps` (it runs `steps * strength`); default: the item's steps"),
)
"""`params.hires` fields: a first pass at width x height, enlarged, then an img2img pass at the larger size."""

HIRES_UPSCALER = "Lanczos"
"""How the first pass's image is enlarged (A1111's `Hires upscaler` label): a Lanczos resize of the decoded image."""

CONTROLNET_PARAMS: tuple[Param, ...] = (
    Param("scale", float, 0, 2, defaults.CONTROLNET_SCALE, doc="weight of the ControlNet's residuals"),
)
"""`params.controlnet` numeric fields (besides `model` and `image`, an upload key)."""

CONTROLNET_INFOTEXT = "ControlNet 0"
"""The infotext label of a ControlNet unit, as A1111's ControlNet extension writes it."""


def hires_size(params: dict[str, Any], width: int, height: int) -> tuple[int, int]:
    """The hires fix's output size for a first pass of `width` x `height` (unchanged without one)."""
    hires = params.get("hires")
    if not hires:
        return width, height
    return (max(8, int(width * hires["scale"]) // 8 * 8), max(8, int(height * hires["scale"]) // 8 * 8))


def hires_loop(params: dict[str, Any]) -> int:
    """Denoising steps of the hires fix's second pass (0 without one): diffusers' img2img runs `steps * strength`."""
    hires = params.get("hires")
    return max(1, int(hires["steps"] * hires["strength"])) if hires else 0


def extras_infotext(params: dict[str, Any]) -> dict[str, Any]:
    """The infotext fields of `params.hires` and `params.controlnet` (A1111's labels)."""
    out: dict[str, Any] = {}
    hires = params.get("hires")
    if hires:
        out.update({p.infotext: hires[p.name] for p in HIRES_PARAMS}, **{"Hires upscaler": HIRES_UPSCALER})
    control = params.get("controlnet")
    if control:
        out[CONTROLNET_INFOTEXT] = (f"Module: none, Model: {control['model']}, Weight: {control['scale']}, "
                                    f"Image: {control['image']}")
    return out


def extras_from_infotext(info: dict[str, Any]) -> dict[str, Any]:
    """`params.hires` and `params.controlnet` read back from parsed infotext (the inverse of `extras_infotext`)."""
    out: dict[str, Any] = {}
    if info.get("Hires upscale"):
        out["hires"] = {p.name: p.parse(str(info[p.infotext])) for p in HIRES_PARAMS if info.get(p.infotext)}
    unit = info.get(CONTROLNET_INFOTEXT)
    if unit:
        fields = dict(part.split(": ", 1) for part in str(unit).split(", ") if ": " in part)
        out["controlnet"] = {"model": fields.get("Model"), "image": fields.get("Image"),
                             "scale": float(fields.get("Weight", defaults.CONTROLNET_SCALE))}
    return out


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
