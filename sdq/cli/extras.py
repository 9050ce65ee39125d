"""`sdq submit` flags for the inpaint mask, ControlNet and the hires fix (`params.mask_image`,
`params.controlnet`, `params.hires`): images are uploaded first and named by their keys."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sdq.cli.client import Client
from sdq.exceptions import InvalidInput


def add_arguments(s: argparse.ArgumentParser) -> None:
    """The flags, on the `submit` parser."""
    s.add_argument("--mask-image", dest="mask_image", help="inpaint: the mask (white is repainted)")
    s.add_argument("--controlnet-image", dest="controlnet_image", help="guide the image with this control image")
    s.add_argument("--controlnet-model", dest="controlnet_model", help="default: the model family's built-in")
    s.add_argument("--controlnet-scale", dest="controlnet_scale", type=float, help="ControlNet weight, 0..2")
    s.add_argument("--hires-scale", dest="hires_scale", type=float, help="hires fix: enlarge by this (1..4)")
    s.add_argument("--hires-strength", dest="hires_strength", type=float, help="hires fix: second pass strength")
    s.add_argument("--hires-steps", dest="hires_steps", type=int, help="hires fix: second pass steps")


def _upload(client: Client, flag: str, name: str) -> str:
    path = Path(name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(flag, f"{flag} {str(path)!r} cannot be read: {exc.strerror}") from None
    return client.upload(data, path.name)["key"]


def apply(args: argparse.Namespace, params: dict[str, Any], client: Client) -> None:
    """Add the mask, ControlNet and hires-fix parameters the flags ask for to `params` (uploading images)."""
    if getattr(args, "mask_image", None):
        params["mask_image"] = _upload(client, "--mask-image", args.mask_image)
    if getattr(args, "controlnet_image", None):
        control = {"image": _upload(client, "--controlnet-image", args.controlnet_image),
                   "model": args.controlnet_model, "scale": args.controlnet_scale}
        params["controlnet"] = {k: v for k, v in control.items() if v is not None}
    elif getattr(args, "controlnet_model", None) or getattr(args, "controlnet_scale", None) is not None:
        raise InvalidInput("--controlnet-image", "--controlnet-model/--controlnet-scale need --controlnet-image")
    hires = {"scale": getattr(args, "hires_scale", None), "strength": getattr(args, "hires_strength", None),
             "steps": getattr(args, "hires_steps", None)}
    if any(v is not None for v in hires.values()):
        params["hires"] = {k: v for k, v in hires.items() if v is not None}
