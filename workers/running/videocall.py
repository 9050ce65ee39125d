"""The parts of a pipeline call that differ for video pipelines: their clips as results, and Wan
image-to-video's prompt encoding when `ftfy` is not installed."""
from __future__ import annotations

import importlib.util
from typing import Any

from sdq import videos
from workers.running.video import Clip


def clips(out: Any, family: str, params: dict[str, Any]) -> list[Clip]:
    """The clips of a video pipeline's output (`output_type="np"`: one float array per prompt)."""
    fps = params.get("fps") or videos.rules(family).default_fps
    return [Clip(frames, fps) for frames in out.frames]


def has_ftfy() -> bool:
    """Whether the `ftfy` package is installed (diffusers' Wan pipelines clean prompts with it)."""
    return importlib.util.find_spec("ftfy") is not None


def call_kwargs(pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` of a video pipeline call as it takes them: one clip per call, so its init image alone (the
    image-to-video pipelines take one image, not a list), and Wan I2V's prompts encoded (`text_kwargs`)."""
    image = kwargs.get("image")
    if isinstance(image, list) and len(image) == 1:
        kwargs = {**kwargs, "image": image[0]}
    return text_kwargs(pipe, kwargs)


def text_kwargs(pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` of a `WanImageToVideoPipeline` call with the prompts encoded ahead when `ftfy` is missing.

    diffusers 0.42's Wan I2V cleans prompts with `ftfy` unconditionally (and fails without it); its
    text-to-video pipeline has the same UMT5 prompt code and uses `ftfy` only when installed. Without
    `ftfy`, the prompts are encoded with that code over the same tokenizer and encoder, and passed as
    embeddings (both halves, so that the I2V call never cleans a prompt itself)."""
    if type(pipe).__name__ != "WanImageToVideoPipeline" or has_ftfy() or "prompt" not in kwargs:
        return kwargs
    from diffusers import WanPipeline

    text = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                       scheduler=pipe.scheduler, transformer=None)
    out = dict(kwargs)
    prompt, negative = out.pop("prompt"), out.pop("negative_prompt", None)
    embeds, negative_embeds = text.encode_prompt(prompt, negative, do_classifier_free_guidance=True,
                                                 device=pipe._execution_device)
    return {**out, "prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}
