"""The parts of a pipeline call that differ for video pipelines: their init image, and their clips as results."""
from __future__ import annotations

from typing import Any

from sdq import videos
from workers.running.video import Clip


def clips(out: Any, family: str, params: dict[str, Any]) -> list[Clip]:
    """The clips of a video pipeline's output (`output_type="np"`: one float array per prompt)."""
    fps = params.get("fps") or videos.rules(family).default_fps
    return [Clip(frames, fps) for frames in out.frames]


def call_kwargs(pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` of a video pipeline call as it takes them: one clip per call, so its init image alone (the
    image-to-video pipelines take one image, not a list)."""
    image = kwargs.get("image")
    if isinstance(image, list) and len(image) == 1:
        return {**kwargs, "image": image[0]}
    return kwargs
