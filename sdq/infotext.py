"""A1111 "infotext": the `parameters` PNG text chunk that records how an image was made.

Format (read by AUTOMATIC1111, ComfyUI importers and most image browsers)::

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 20, Sampler: PNDM, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: builtin:tiny-sd, ...
"""
from __future__ import annotations

import json
import re

from sdq import options
from sdq.pipelines import SAMPLER_NAMES, all_images, all_params

SCHEDULER_OF_SAMPLER = {v: k for k, v in SAMPLER_NAMES.items()}
"""A1111 sampler name -> our scheduler name."""

_FIELD = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:"\n') else text


def format_infotext(prompt: str, negative_prompt: str, fields: dict[str, object]) -> str:
    """Infotext for one image; `fields` keeps its order, None values are left out."""
    lines = [prompt.replace("\n", " ")]
    if negative_prompt:
        lines.append("Negative prompt: " + negative_prompt.replace("\n", " "))
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields.items() if v is not None and v != ""))
    return "\n".join(lines)


def parse_infotext(text: str) -> dict[str, object]:
    """Parse infotext into `{"prompt", "negative_prompt", <field>: <string value>...}`."""
    lines = text.strip("\n").split("\n")
    params_line = lines[-1] if len(lines) > 1 or _FIELD.match(lines[-1] or "") else ""
    body = lines[:-1] if params_line else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    out: dict[str, object] = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    for key, value in _FIELD.findall(params_line):
        value = value.strip()
        if value.startswith('"'):
            value = json.loads(value)
        out[key.strip()] = value
    return out


def params_from_infotext(info: dict[str, object]) -> dict[str, object]:
    """Turn parsed infotext back into submit `params` (the inverse of the worker's fields): size
    (the input size for upscale), steps, guidance, scheduler, seed, strength, noise level, negative
    prompt, init image, request options and watermark."""
    params: dict[str, object] = {}
    if "Steps" in info:
        params["steps"] = int(info["Steps"])
    if "CFG scale" in info:
        params["guidance_scale"] = float(info["CFG scale"])
    if "Seed" in info:
        params["seed"] = int(info["Seed"])
    size = info.get("Input size") or info.get("Size")
    if size:
        w, _, h = str(size).partition("x")
        params["width"], params["height"] = int(w), int(h)
    if info.get("Sampler") in SCHEDULER_OF_SAMPLER:
        params["scheduler"] = SCHEDULER_OF_SAMPLER[str(info["Sampler"])]
    for param in all_params().values():  # each pipeline's own parameters, under their infotext labels
        if param.infotext and param.infotext in info:
            params[param.name] = param.parse(str(info[param.infotext]))
    if info.get("negative_prompt"):
        params["negative_prompt"] = str(info["negative_prompt"])
    for image in all_images().values():  # the uploads the image was made from
        if image.infotext and info.get(image.infotext):
            params[image.field] = str(info[image.infotext])
    params.update(options.from_infotext(info)[1])  # each request option written
    params["watermark"] = bool(info.get("Watermark"))
    return params


def submit_body_from_infotext(info: dict[str, object]) -> dict[str, object]:
    """A complete submit body that makes the image described by parsed infotext again (what options
    added to the prompt, e.g. LoRA tags, becomes their parameters again)."""
    prompt, _ = options.from_infotext(info)
    params = params_from_infotext(info)
    body: dict[str, object] = {"prompts": [prompt], "params": params}
    if info.get("Model"):
        body["model"] = str(info["Model"])
    if info.get("Pipeline"):
        body["pipeline"] = str(info["Pipeline"])
    return body
