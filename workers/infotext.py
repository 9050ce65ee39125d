"""The A1111 infotext a worker writes into each result (PNG text chunk and item record)."""
from __future__ import annotations

from sdq import __version__, loras, pipelines
from sdq.infotext import SAMPLER_NAMES, format_infotext
from sdq.records import Chunk, Item
from workers import watermark
from workers.device import Device


def infotext_for(chunk: Chunk, item: Item, size: tuple[int, int], device: Device,
                 worker: str, watermarked: bool = False, dtype: str | None = None,
                 nsfw: bool | None = None, lora_hashes: dict[str, str] | None = None) -> str:
    """The A1111 infotext of one result: every parameter needed to make it again, the dtype the UNet
    ran in (`dtype`, read from the pipeline), the safety checker's verdict (None: no checker ran)
    and the LoRA adapters (tags after the prompt, as A1111 writes them, and their hashes)."""
    p, task = chunk.params, chunk.pipeline
    spec = pipelines.spec(task)
    fields: dict[str, object] = {
        "Steps": p["steps"], "Sampler": SAMPLER_NAMES.get(p["scheduler"], p["scheduler"]),
        "CFG scale": p["guidance_scale"], "Seed": item.seed,
        "Size": "{}x{}".format(*(spec.output_size(p["width"], p["height"]) if p.get("hires") else size)),
        "Model": chunk.model, "Pipeline": task,
        **spec.infotext_fields(p),
        **pipelines.family_infotext(p),
        **{image.infotext: item.image_key(image.field) for image in spec.images if image.infotext},
        **loras.infotext_fields(p.get(loras.FIELD), lora_hashes),
        "Input size": spec.input_size(p),
        **pipelines.extras_infotext(p),
        "Watermark": watermark.LABEL if watermarked else None,
        "Safety checker": None if nsfw is None else ("flagged" if nsfw else "passed"),
        "Device": device.device, "Dtype": dtype or device.dtype, "Backend": device.backend,
        "Worker": worker, "Job": chunk.job,
        "Version": f"sdq {__version__}",
    }
    prompt = loras.prompt_with_tags(item.prompt, p.get(loras.FIELD))
    return format_infotext(prompt, item.negative_prompt or "", fields)
