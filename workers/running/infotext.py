"""The A1111 infotext a worker writes into each result (PNG text chunk and item record)."""
from __future__ import annotations

from typing import Any

from sdq import __version__, options, pipelines
from sdq.infotext import SAMPLER_NAMES, format_infotext
from sdq.records import Chunk, Item
from workers.running import watermark
from workers.loading.device import Device


def infotext_for(chunk: Chunk, item: Item, size: tuple[int, int], device: Device,
                 worker: str, watermarked: bool = False, dtype: str | None = None,
                 nsfw: bool | None = None, applied: dict[str, Any] | None = None) -> str:
    """The A1111 infotext of one result: every parameter needed to make it again, the dtype the UNet
    ran in (`dtype`, read from the pipeline), the safety checker's verdict (None: no checker ran)
    and each request option's fields (`applied`: option name -> what its worker hook's `apply` returned).
    `Size` is the first pass's size when options add passes, as A1111 writes it."""
    p, task = chunk.params, chunk.pipeline
    spec = pipelines.spec(task)
    passes = options.passes(task, p)
    first = passes[0]
    fields: dict[str, object] = {
        "Steps": p["steps"], "Sampler": SAMPLER_NAMES.get(p["scheduler"], p["scheduler"]),
        "CFG scale": p["guidance_scale"], "Seed": item.seed,
        "Size": "{}x{}".format(*((first.width, first.height) if len(passes) > 1 else size)),
        "Model": chunk.model, "Pipeline": task,
        **spec.infotext_fields(p),
        **pipelines.family_infotext(p),
        **{image.infotext: item.image_key(image.field) for image in spec.images if image.infotext},
        "Input size": spec.input_size(p),
        **options.infotext(p, applied),
        "Watermark": watermark.LABEL if watermarked else None,
        "Safety checker": None if nsfw is None else ("flagged" if nsfw else "passed"),
        "Device": device.device, "Dtype": dtype or device.dtype, "Backend": device.backend,
        "Worker": worker, "Job": chunk.job,
        "Version": f"sdq {__version__}",
    }
    prompt = options.prompt(item.prompt, p)
    return format_infotext(prompt, item.negative_prompt or "", fields)
