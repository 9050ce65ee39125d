"""The A1111 door's synchronous half: base64 images in (init image, mask) as uploads, the job waited for, and
A1111's answer (`images`, `parameters`, `info`) built from the stored results.

A waiting request polls the job's record (one short Redis read at a time, no held connection), sleeping in
between: under the producer's gevent workers a wait costs one parked greenlet, so many waiting requests do
not stop the rest of the API. Past the bound (`SDQ_A1111_WAIT_SECONDS`) the request ends with a 408 naming the
job, which goes on and can be fetched with `GET /v1/jobs/{id}`.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import re
import time
from typing import Any

from producer import offload
from sdq import pipelines
from sdq.exceptions import InvalidInput
from sdq.infotext import parse_infotext
from sdq.records import Item, Job
from sdq.state.store import JobStore
from storage import ResultStore

DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,")


def decode_b64(text: str, field: str) -> bytes:
    """The bytes of a base64 image (with or without a `data:...;base64,` prefix); 422 naming `field`."""
    raw = DATA_URL.sub("", text.strip(), count=1)
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(field, f"{field}: not valid base64", code="invalid_image") from None
    if not data:
        raise InvalidInput(field, f"{field}: the image is empty", code="invalid_image")
    return data


def mask_png(data: bytes, size: tuple[int, int], invert: bool) -> bytes:
    """An A1111 mask as sdq's inpaint mask: its alpha channel when it has a transparent part, else its grey
    level; resized to the init image's `size`; made black and white at the middle grey (A1111's `mask_round`),
    inverted when asked (`inpainting_mask_invert`); white is repainted. CPU work: run it off the loop."""
    from PIL import Image, ImageOps

    from producer.uploads import decode_image

    with Image.open(io.BytesIO(data)) as probe:
        has_alpha = probe.mode in ("RGBA", "LA", "PA") or "transparency" in probe.info
        alpha = probe.convert("RGBA").getchannel("A") if has_alpha else None
    grey = decode_image(data).convert("L")  # decode_image checks format and size first
    if alpha is not None and alpha.getextrema()[0] < 255:
        grey = alpha
    if grey.size != size:
        grey = grey.resize(size, Image.Resampling.LANCZOS)
    grey = grey.point(lambda v: 255 if v > 128 else 0)
    if invert:
        grey = ImageOps.invert(grey)
    buf = io.BytesIO()
    grey.save(buf, format="PNG")
    return buf.getvalue()


def _infotext(png: bytes) -> str:
    """The `parameters` text chunk of a PNG ("" when it has none)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return str(img.info.get("parameters") or (img.text or {}).get("parameters") or "")


def png_info(data: bytes) -> dict[str, Any]:
    """A1111's png-info answer: `info` (the `parameters` text), `items` (every text chunk) and `parameters`
    (the infotext's fields). CPU work: run it off the loop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP")) as img:
            chunks = {k: v for k, v in (getattr(img, "text", None) or img.info).items() if isinstance(v, str)}
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput("image", f"image: not a PNG, JPEG or WebP image ({type(exc).__name__})",
                           code="invalid_image") from None
    text = chunks.pop("parameters", "")
    parsed = parse_infotext(text) if text else {}
    params = {("Prompt" if k == "prompt" else "Negative prompt" if k == "negative_prompt" else k): v
              for k, v in parsed.items()}
    return {"info": text, "items": chunks, "parameters": params}


def results(jobs: JobStore, store: ResultStore, job: Job) -> tuple[list[Item], list[bytes]]:
    """The job's succeeded items in index order and their stored PNG bytes."""
    items = [it for it in jobs.items(job.id, 0, job.n_items, job.n_items) if it.state == "succeeded" and it.key]
    return items, [store.get(it.key) for it in items]


def answer(job: Job, items: list[Item], pngs: list[bytes], request: dict[str, Any], send_images: bool,
           sampler: str) -> dict[str, Any]:
    """A1111's txt2img/img2img answer: base64 `images`, the request echoed as `parameters`, `info` a JSON string."""
    infotexts = [offload.run(_infotext, png) for png in pngs]
    seeds = [it.seed for it in items]
    params = job.params
    info = {
        "prompt": request.get("prompt", ""), "all_prompts": [request.get("prompt", "")] * len(items),
        "negative_prompt": params.get("negative_prompt") or "",
        "all_negative_prompts": [it.negative_prompt or "" for it in items],
        "seed": seeds[0] if seeds else job.seed, "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(items),
        "subseed_strength": 0, "width": params.get("width"), "height": params.get("height"),
        "sampler_name": sampler, "cfg_scale": params.get("true_cfg_scale") or params.get("guidance_scale"),
        "steps": params.get("steps"),
        "batch_size": request.get("batch_size", 1), "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": job.model, "sd_model_hash": None, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": params.get("strength"),
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": infotexts, "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created_at or time.time())),
        "clip_skip": 1, "is_using_inpainting_conditioning": "mask_image" in pipelines.spec(job.pipeline).image_fields,
        "version": "sdq",
        "job_id": job.id, "job_state": job.state,
    }
    images = [base64.b64encode(png).decode("ascii") for png in pngs] if send_images else []
    return {"images": images, "parameters": request, "info": json.dumps(info)}
