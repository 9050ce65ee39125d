"""`params.hires` and `params.controlnet` checked at submit against the pipeline table and the model.

Both are job-wide. The hires fix needs a pipeline with a `hires_pass` (txt2img); a ControlNet needs
a pipeline with ControlNet classes for the model's family, an allowed ControlNet of that family, and
a control image that is an upload of the caller. Size rules of the control image: it is any upload
(PNG/JPEG/WebP, checked and decoded at upload); where the pipeline has an init image it must be the
same size as it; otherwise it gives the item's size when the request gives no width/height (rounded
down to a multiple of 8), like an init image. The worker resizes it to each pass's size (Lanczos).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sdq import defaults, pipelines
from sdq.exceptions import InvalidInput
from sdq.models import BUILTIN_CONTROLNETS, BUILTIN_FAMILIES

CONTROL_FIELD = "params.controlnet.image"
"""The request field of the control image (errors name it)."""


@dataclass
class Extras:
    """The job's checked `hires` and `controlnet` objects (None: not asked for) and the control image's record."""

    hires: dict[str, Any] | None = None
    controlnet: dict[str, Any] | None = None
    control_record: dict[str, Any] | None = None

    def apply(self, params: dict[str, Any], size_multiple: int = 8) -> dict[str, Any]:
        """An item's parameters with the extras added (the hires steps default to the item's steps); 422
        naming `params.hires.scale` when the hires size is not a multiple of the family's `size_multiple`."""
        out = dict(params)
        if self.hires is not None:
            out["hires"] = {**self.hires, "steps": self.hires.get("steps") or params["steps"]}
            big = pipelines.hires_size(out, params["width"], params["height"])
            if big[0] % size_multiple or big[1] % size_multiple:
                raise InvalidInput("params.hires.scale", f"params.hires.scale={self.hires['scale']} makes "
                                   f"{big[0]}x{big[1]}, not a multiple of {size_multiple} as this model's family "
                                   f"needs", code="bad_size")
        if self.controlnet is not None:
            out["controlnet"] = dict(self.controlnet)
        return out

    def check_size(self, init: dict[str, Any] | None, where: str) -> dict[str, Any] | None:
        """The upload record the item takes its size from; the control image must match an init image."""
        control = self.control_record
        if control is None or init is None:
            return init or control
        if (control["width"], control["height"]) != (init["width"], init["height"]):
            raise InvalidInput(CONTROL_FIELD, f"{CONTROL_FIELD} is {control['width']}x{control['height']} but "
                               f"{where}init_image is {init['width']}x{init['height']}: they must be the same size",
                               code="size_mismatch")
        return init


def _takers(attr: str) -> str:
    return ", ".join(s.name for s in pipelines.SPECS.values() if getattr(s, attr)) or "none"


def _families() -> str:
    return ", ".join(sorted({f for s in pipelines.SPECS.values() if s.controlnet for f in s.controlnet.classes}))


def check_extras(given: dict[str, Any], spec: pipelines.PipelineSpec, model: str, allowlist: tuple[str, ...],
                 uploads: Callable[[str, str], dict[str, Any]] | None, family: str | None = None) -> Extras:
    """`given["hires"]` and `given["controlnet"]` checked for `spec` and `model` (of `family`, None: not known
    here, the worker then checks); InvalidInput naming the field."""
    out = Extras()
    if given.get("hires") is not None:
        if spec.hires_pass is None:
            raise InvalidInput("params.hires", f"pipeline {spec.name!r} takes no hires fix ({_takers('hires_pass')} "
                               f"do)", code="unexpected_hires")
        out.hires = {p.name: given["hires"].get(p.name, p.default) for p in pipelines.HIRES_PARAMS}
    control = given.get("controlnet")
    if control is None:
        return out
    family = family or BUILTIN_FAMILIES.get(model)
    if spec.controlnet is None or (family is not None and spec.class_for(family, controlnet=True) is None):
        what = f"model {model!r} ({family} family)" if family else f"pipeline {spec.name!r}"
        raise InvalidInput("params.controlnet", f"{what} has no ControlNet pipeline for {spec.name!r}; ControlNet "
                           f"runs with {_takers('controlnet')} on {_families()} models", code="unsupported_controlnet")
    name = control.get("model") or next((cn for cn, fam in BUILTIN_CONTROLNETS.items() if fam == family),
                                        defaults.CONTROLNET_MODEL)
    if name not in BUILTIN_CONTROLNETS and name not in allowlist:
        raise InvalidInput("params.controlnet.model", f"unknown ControlNet {name!r}; allowed: "
                           f"{', '.join([*BUILTIN_CONTROLNETS, *allowlist])}", code="unknown_model")
    if family is not None and BUILTIN_CONTROLNETS.get(name, family) != family:
        raise InvalidInput("params.controlnet.model", f"ControlNet {name!r} is for the {BUILTIN_CONTROLNETS[name]} "
                           f"family, model {model!r} is {family}", code="family_mismatch")
    out.controlnet = {"model": name, "image": control["image"],
                      "scale": control.get("scale", pipelines.CONTROLNET_PARAMS[0].default)}
    if uploads is not None:
        out.control_record = uploads(control["image"], CONTROL_FIELD)
    return out
