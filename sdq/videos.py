"""Video rules per family: frame counts, sizes, frame rates and their defaults; the keys of a stored clip.

Torch-free, for the producer's checks and the worker alike. A clip's frame count must fit the family's
VAE: Wan compresses time 4x and LTX-Video 8x, keeping the first frame, so Wan takes 4k+1 frames and LTX
8k+1. diffusers rounds a count that breaks the rule (Wan with a warning, LTX silently): sdq refuses it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sdq.exceptions import InvalidInput

MIN_FPS = 1
"""Slowest frame rate accepted, frames per second."""

MAX_FPS = 120
"""Fastest frame rate accepted, frames per second."""

MAX_FRAMES = 1441
"""Most frames any clip may have (a minute at 24 fps, plus the first frame); a family may allow fewer."""

WAN = "wan"
"""Wan 2.1/2.2 (text- and image-to-video)."""

LTX = "ltx"
"""LTX-Video."""


@dataclass(frozen=True)
class VideoRules:
    """What one video family accepts and what it makes when a request leaves a value out."""

    family: str
    frame_step: int
    """Temporal compression of the VAE: frame counts are `frame_step` * k + 1."""
    max_frames: int
    size_multiple: int
    """Width and height must be multiples of this (VAE downsampling x transformer patch size)."""
    max_side: int
    default_size: tuple[int, int]
    """(width, height) the published models were trained at."""
    default_frames: int
    default_fps: int
    """The frame rate the published models were trained at (LTX also conditions on it)."""

    def check_frames(self, frames: Any) -> int:
        """`frames` as an int; InvalidInput on `frames` naming the value and the rule otherwise."""
        if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= self.max_frames \
                or (frames - 1) % self.frame_step:
            raise InvalidInput("frames", f"frames must be {self.frame_step}k+1 from 1 to {self.max_frames} for "
                                         f"{self.family} (e.g. {self.default_frames}), got {frames!r}")
        return frames

    def check_size(self, width: Any, height: Any) -> tuple[int, int]:
        """(width, height); InvalidInput on the first bad one, naming it and its value."""
        for field, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= self.max_side \
                    or value % self.size_multiple:
                raise InvalidInput(field, f"{field} must be a multiple of {self.size_multiple} from "
                                          f"{self.size_multiple} to {self.max_side} for {self.family}, got {value!r}")
        return width, height

    def latent_frames(self, frames: int) -> int:
        """Frames the transformer denoises for a clip of `frames` (the work grows with these x pixels x steps)."""
        return (frames - 1) // self.frame_step + 1


FAMILIES: dict[str, VideoRules] = {r.family: r for r in (
    # Wan 2.1 480p models: 832x480, 81 frames at 16 fps (the 720p ones 1280x720; Wan 2.2 5B 121 at 24 fps).
    VideoRules(WAN, frame_step=4, max_frames=161, size_multiple=16, max_side=1280, default_size=(832, 480),
               default_frames=81, default_fps=16),
    # LTX-Video 0.9: the pipeline's defaults, 704x512, 161 frames at 25 fps; up to 257 frames.
    VideoRules(LTX, frame_step=8, max_frames=257, size_multiple=32, max_side=1280, default_size=(704, 512),
               default_frames=161, default_fps=25),
)}
"""Video family name -> its rules."""


def rules(family: str) -> VideoRules:
    """The rules of video family `family`; KeyError naming the known ones otherwise."""
    try:
        return FAMILIES[family]
    except KeyError:
        raise KeyError(f"unknown video family {family!r}; known: {', '.join(FAMILIES)}") from None


def check_fps(fps: Any) -> float:
    """`fps` as a number; InvalidInput on `fps` naming the value unless from `MIN_FPS` to `MAX_FPS`."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) \
            or not MIN_FPS <= fps <= MAX_FPS:
        raise InvalidInput("fps", f"fps must be a number from {MIN_FPS} to {MAX_FPS}, got {fps!r}")
    return fps


def video_key(job_id: str, index: int) -> str:
    """S3 key of an item's MP4 (its poster PNG is stored at the item's image key, `sdq.contract.result_key`)."""
    return f"jobs/{job_id}/{index:05d}.mp4"


TINY_FRAMES = {WAN: 5, LTX: 9}
"""Default frames of a tiny built-in (a few MB of random weights: a short clip, not the published length)."""


def is_video(family: str | None) -> bool:
    """Whether `family` makes clips (its items take `frames` and `fps`)."""
    return family in FAMILIES


def item_defaults(family: str, side: int | None) -> dict[str, Any]:
    """A video family's defaults for what a request leaves out: frames, fps and (non-square) size.
    `side`: the model's own default side when it differs from the family's (the tiny built-ins), which
    then gives a square clip of `TINY_FRAMES` frames."""
    rule = rules(family)
    if side is not None and side != rule.default_size[1]:
        return {"frames": TINY_FRAMES[family], "fps": rule.default_fps, "width": side, "height": side}
    width, height = rule.default_size
    return {"frames": rule.default_frames, "fps": rule.default_fps, "width": width, "height": height}


def check_item(family: str, params: dict[str, Any], where: str) -> None:
    """InvalidInput naming `where` + the field for frames, fps or a size that breaks `family`'s rules."""
    rule = rules(family)
    try:
        if params.get("frames") is not None:
            rule.check_frames(params["frames"])
        if params.get("fps") is not None:
            check_fps(params["fps"])
        if params.get("width") is not None and params.get("height") is not None:
            rule.check_size(params["width"], params["height"])
    except InvalidInput as exc:
        raise InvalidInput(f"{where}{exc.field}", f"{where}{exc.message}", code=exc.code) from None


def frames_of(params: dict[str, Any]) -> int:
    """Frames an item makes (1 for an image): its work and memory grow with them."""
    return int(params.get("frames") or 1)
