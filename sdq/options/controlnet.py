"""`params.controlnet`: a ControlNet model and its control image guide every item of the job.

A ControlNet needs a pipeline with ControlNet classes for the model's family, an allowed ControlNet of
that family, and a control image that is an upload of the caller. Size rules of the control image:
it is any upload (PNG/JPEG/WebP, checked and decoded at upload); where the pipeline has an init image
it must be the same size as it; otherwise it gives the item's size when the request gives no
width/height (rounded down to a multiple of 8), like an init image. The worker hook
(`workers.options.controlnet`) loads the ControlNet once per model and resizes the control image to
each pass's size (Lanczos).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from sdq.exceptions import InvalidInput
from sdq.families import SD, SDXL
from sdq.modelinfo import BUILTIN_FAMILIES
from sdq.options.base import CacheInputs, Describe, FormField, OptionSpec, Submit
from sdq.params import Param, Text
from sdq.sources import source_for

IMAGE_FIELD = "params.controlnet.image"
"""The request field of the control image (errors name it)."""

SCALE = 1.0
"""Weight of the ControlNet's residuals (`params.controlnet.scale`, diffusers' `controlnet_conditioning_scale`)."""

DEFAULT_MODEL = "builtin:tiny-controlnet"
"""ControlNet used when `params.controlnet` names no model and the model's family has no built-in one
(`BUILTINS`) or is not known at submit."""

BUILTINS: dict[str, str] = {
    "builtin:tiny-controlnet": SD,
    "builtin:tiny-sdxl-controlnet": SDXL,
}
"""Built-in ControlNet id -> the family of models it conditions (the first of a family is its default)."""

INFOTEXT = "ControlNet 0"
"""The infotext label of a ControlNet unit, as A1111's ControlNet extension writes it."""

IMAGE = "controlnet.image"
"""Key of the control images in a call's images (one per prompt), and of its bytes in the cache key."""


SOURCES = ("builtin", "folder", "store")
"""Kinds of model source (`sdq.sources`) a ControlNet may come from: a built-in, a local folder holding its
`config.json` and weights, a folder pushed with `sdq models push` (`store:NAME`). Not a hub id (the worker's
hub download fetches pipelines, which a ControlNet repo is not) nor a single checkpoint file."""


@dataclass(frozen=True)
class Use:
    """How a pipeline runs with a ControlNet: the diffusers class per family and the keyword the
    control image is passed as (`image` where the pipeline has no init image, else `control_image`)."""

    classes: dict[str, str]
    kwarg: str = "control_image"


USES: dict[str, Use] = {
    "txt2img": Use({SD: "StableDiffusionControlNetPipeline", SDXL: "StableDiffusionXLControlNetPipeline"},
                   kwarg="image"),
    "img2img": Use({SD: "StableDiffusionControlNetImg2ImgPipeline", SDXL: "StableDiffusionXLControlNetImg2ImgPipeline"}),
    "inpaint": Use({SD: "StableDiffusionControlNetInpaintPipeline", SDXL: "StableDiffusionXLControlNetInpaintPipeline"}),
}
"""Pipeline -> its ControlNet classes (the pipelines that take a ControlNet)."""


def class_for(pipeline: str, family: str) -> str | None:
    """The diffusers class that runs `pipeline` with a ControlNet for a model of `family` (None: none)."""
    use = USES.get(pipeline)
    return use.classes.get(family) if use else None


class ControlNet(OptionSpec):
    """A ControlNet: checked against the model's family, keyed by its weights and the control image's
    bytes, run as its own pipeline variant, written as A1111's `ControlNet 0` unit."""

    name = "controlnet"
    title = "ControlNet"
    doc = "`params.controlnet`: a ControlNet model and its control image."
    fields = (Text("model", 1000), Text("image", 200, required=True),
              Param("scale", float, 0, 2, SCALE, doc="weight of the ControlNet's residuals"))
    schema_name = "ControlNetIn"
    pipelines = tuple(USES)
    image_field = IMAGE_FIELD
    legend = "ControlNet"
    toggle = "Guide the image with a control image"
    form = (FormField("image", "Control image (PNG, JPEG, WebP)", "file",
                      (("accept", "image/png,image/jpeg,image/webp"),)),
            FormField("model", "ControlNet model", "text", (("placeholder", "the model family's built-in"),
                                                            ("autocomplete", "off"))),
            FormField("scale", "ControlNet weight", attrs=(("min", "0"), ("max", "2"), ("step", "0.05"), ("value", "1"),
                                                           ("inputmode", "decimal"))))

    names_weights = True

    def offered(self, pipeline: str, family: str | None) -> bool:
        """Pipelines with ControlNet classes, for the model's family when it is known."""
        return pipeline in USES and (family is None or class_for(pipeline, family) is not None)

    def weights(self, allowlist: tuple[str, ...], describe: Describe | None = None) -> dict[str, str | None]:
        """The built-in ControlNets and allowlisted ControlNet folders (a single model's `config.json`)."""
        out: dict[str, str | None] = dict(BUILTINS)
        for model in allowlist:
            path = getattr(source_for(model), "path", None)
            if (path is not None and path.is_dir() and (path / "config.json").is_file()
                    and not (path / "model_index.json").is_file()):
                out[model] = None
        return out

    def push_note(self, manifest: dict[str, Any]) -> str | None:
        """A pushed folder of a single model (`config.json`, no `model_index.json`) is a ControlNet's."""
        paths = {f.get("path") for f in manifest.get("files") or []}
        if manifest.get("kind") == "folder" and "config.json" in paths and "model_index.json" not in paths:
            return f"a single model's folder, e.g. a ControlNet: name it in params.{self.name}.model"
        return None

    def check(self, value: Any, ctx: Submit) -> Any:
        """The model (the family's built-in when none is named), the image and the weight."""
        if value is None:
            return None
        family = ctx.family or BUILTIN_FAMILIES.get(ctx.model)
        if ctx.spec.name not in USES or (family is not None and class_for(ctx.spec.name, family) is None):
            what = f"model {ctx.model!r} ({family} family)" if family else f"pipeline {ctx.spec.name!r}"
            families = ", ".join(sorted({f for use in USES.values() for f in use.classes}))
            raise InvalidInput("params.controlnet", f"{what} has no ControlNet pipeline for {ctx.spec.name!r}; "
                               f"ControlNet runs with {', '.join(USES)} on {families} models",
                               code="unsupported_controlnet")
        name = value.get("model") or next((cn for cn, fam in BUILTINS.items() if fam == family), DEFAULT_MODEL)
        if name not in BUILTINS and name not in ctx.allowlist:
            raise InvalidInput("params.controlnet.model", f"unknown ControlNet {name!r}; allowed: "
                               f"{', '.join([*BUILTINS, *ctx.allowlist])}", code="unknown_model")
        kind = source_for(name).kind
        if kind not in SOURCES:
            raise InvalidInput("params.controlnet.model", f"ControlNet {name!r} is a {kind} id; a ControlNet is "
                               f"a built-in, a local folder (config.json and its weights) or a pushed one "
                               f"(store:NAME)", code="unsupported_source")
        if family is not None and BUILTINS.get(name, family) != family:
            raise InvalidInput("params.controlnet.model", f"ControlNet {name!r} is for the {BUILTINS[name]} "
                               f"family, model {ctx.model!r} is {family}", code="family_mismatch")
        return {"model": name, "image": value["image"], "scale": value.get("scale", SCALE)}

    def image_record(self, value: Any, ctx: Submit) -> dict[str, Any] | None:
        """The control image's upload record (it gives the item's size like an init image)."""
        return ctx.uploads(value["image"], IMAGE_FIELD) if ctx.uploads is not None else None

    def add(self, params: dict[str, Any], value: Any, size_multiple: int = 8) -> dict[str, Any]:
        """The checked object, a copy per item."""
        return {**params, self.name: dict(value)}

    def pipeline_classes(self) -> set[str]:
        """Every ControlNet pipeline class."""
        return {c for use in USES.values() for c in use.classes.values()}

    def variant(self, params: dict[str, Any]) -> str | None:
        """The ControlNet's id: each one makes its own pipeline over the model's modules."""
        value = params.get(self.name)
        return value["model"] if value else None

    def cache_inputs(self, value: Any) -> CacheInputs:
        """The control image's bytes and the ControlNet's weights."""
        return CacheInputs(images={IMAGE: value["image"]}, weights={"controlnet.model": value["model"]})

    def infotext(self, value: Any, applied: Any = None) -> dict[str, Any]:
        """One `ControlNet 0` unit: module, model, weight and the control image's key."""
        return {INFOTEXT: f"Module: none, Model: {value['model']}, Weight: {value['scale']}, Image: {value['image']}"}

    def from_infotext(self, info: dict[str, Any]) -> Any:
        """The unit's model, image and weight."""
        unit = info.get(INFOTEXT)
        if not unit:
            return None
        fields = dict(part.split(": ", 1) for part in str(unit).split(", ") if ": " in part)
        return {"model": fields.get("Model"), "image": fields.get("Image"), "scale": float(fields.get("Weight", SCALE))}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """`--controlnet-image`, `--controlnet-model`, `--controlnet-scale`."""
        parser.add_argument("--controlnet-image", dest="controlnet_image", help="guide the image with this control image")
        parser.add_argument("--controlnet-model", dest="controlnet_model", help="default: the model family's built-in")
        parser.add_argument("--controlnet-scale", dest="controlnet_scale", type=float, help="ControlNet weight, 0..2")

    def from_args(self, args: argparse.Namespace, upload: Callable[[str, str], str]) -> Any:
        """The control image uploaded first; the model and weight need it."""
        if getattr(args, "controlnet_image", None):
            value = {"image": upload("--controlnet-image", args.controlnet_image),
                     "model": args.controlnet_model, "scale": args.controlnet_scale}
            return {k: v for k, v in value.items() if v is not None}
        if getattr(args, "controlnet_model", None) or getattr(args, "controlnet_scale", None) is not None:
            raise InvalidInput("--controlnet-image", "--controlnet-model/--controlnet-scale need --controlnet-image")
        return None
