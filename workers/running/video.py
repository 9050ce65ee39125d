"""A video pipeline's frames as stored results: an H.264 MP4 (with the parameters in its metadata) and a poster PNG.

Encoded with PyAV, whose wheels carry FFmpeg and libx264: no system ffmpeg is needed. The MP4 is what
browsers play: H.264 High profile in 4:2:0 (`yuv420p`), the index (`moov`) at the front (`faststart`) so
playback starts before the download ends, converted and tagged as BT.709. 4:2:0 needs even sides: an odd
width or height is padded by one column or row that repeats the edge (no pixel of the clip is lost, and no
black line appears); the poster keeps the clip's own size. The same frames need not give the same bytes:
libx264's output varied now and then between runs here (about 1 encode in 100 under load, even on one
thread), so compare clips by their decoded frames, not their digests. Torch-free: frames are numpy arrays
or PIL images.
"""
from __future__ import annotations

import io
import math
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sdq.videos import MAX_FPS, MAX_FRAMES, MIN_FPS, video_key  # noqa: F401 - video_key: the clip's key

CRF = 18
"""libx264's constant rate factor: 18 is close to visually lossless (0 lossless, 23 its default, 51 worst)."""

PRESET = "medium"
"""libx264's speed/size trade-off (its default)."""

COLOUR_TAGS = {"colorspace": "bt709", "color_primaries": "bt709", "color_trc": "bt709", "color_range": "tv"}
"""How the stream is tagged, matching the RGB -> Y'CbCr conversion (BT.709, limited range): players then
convert back with the same matrix instead of guessing it from the size."""

COMMENT_TAG = "comment"
"""MP4 metadata tag holding the A1111-style parameters (the `©cmt` atom; `ffprobe` and players show it)."""

MP4_CONTENT_TYPE = "video/mp4"
"""Content type of the stored clip."""


def check_fps(fps: Any) -> Fraction:
    """`fps` as an exact rate (a float's nearest fraction with a denominator up to 1001: 29.97 -> 2997/100);
    ValueError naming the value unless a number in range."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction, np.integer, np.floating)) \
            or not math.isfinite(fps) \
            or not MIN_FPS <= fps <= MAX_FPS:
        raise ValueError(f"fps must be a number from {MIN_FPS} to {MAX_FPS}, got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


def check_frame_count(count: Any) -> int:
    """`count` as an int; ValueError naming the value unless a whole number from 1 to `MAX_FRAMES`."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= MAX_FRAMES:
        raise ValueError(f"frames must be a whole number from 1 to {MAX_FRAMES}, got {count!r}")
    return int(count)


def as_uint8(frames: Any) -> np.ndarray:
    """The clip as one (frames, height, width, 3) uint8 array.

    Takes what video pipelines return for one clip: a float array in [0, 1] (`output_type="np"`, values
    outside are clipped), a uint8 array, or a list of PIL images (`output_type="pil"`, all one size).
    """
    if isinstance(frames, np.ndarray):
        clip = frames
    else:
        clip = _stack_images(frames)
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"frames must be shaped (frames, height, width, 3), got {tuple(clip.shape)}")
    check_frame_count(clip.shape[0])
    if clip.dtype == np.uint8:
        return clip
    if not np.issubdtype(clip.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in [0, 1], got {clip.dtype}")
    if not np.isfinite(clip).all():
        raise ValueError("frames hold NaN or infinite values")
    return (np.clip(clip, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _stack_images(images: Sequence[Any]) -> np.ndarray:
    """A list of PIL images as one uint8 array; ValueError if empty, not images, or of mixed sizes."""
    try:
        check_frame_count(len(images))
        sizes = {image.size for image in images}
        if len(sizes) > 1:
            raise ValueError(f"frames must all be one size, got {sorted(sizes)}")
        return np.stack([np.asarray(image.convert("RGB")) for image in images])
    except (AttributeError, TypeError):
        raise ValueError(f"frames must be an array or a list of PIL images, got {type(images).__name__}") from None


def even_sides(clip: np.ndarray) -> np.ndarray:
    """`clip` with an odd height or width padded by repeating its last row or column (4:2:0 needs even sides)."""
    pad_h, pad_w = clip.shape[1] % 2, clip.shape[2] % 2
    if not pad_h and not pad_w:
        return clip
    return np.pad(clip, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def encode_mp4(frames: Any, fps: Any, comment: str | None = None) -> bytes:
    """The MP4 bytes of `frames` (see `as_uint8`) at `fps`, with `comment` (the infotext) in its metadata."""
    import av

    # 1. Check inputs before any encoding.
    rate = check_fps(fps)
    clip = even_sides(as_uint8(frames))
    height, width = clip.shape[1:3]
    # 2. Encode: the mov muxer's faststart rewrites the file, so it needs a real one (not a BytesIO).
    with tempfile.TemporaryDirectory(prefix="sdq-mp4-") as tmp:
        path = Path(tmp) / "clip.mp4"
        with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
            if comment:
                container.metadata[COMMENT_TAG] = comment
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(CRF), "preset": PRESET, **COLOUR_TAGS}
            for index, pixels in enumerate(clip):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(
                    format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
                frame.pts = index
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))  # flush the encoder's delayed frames
        return path.read_bytes()


def poster_png(frames: Any) -> bytes:
    """PNG bytes of the clip's first frame at its own size: what a player shows before it plays (and, for
    image-to-video, the frame nearest the input image)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(as_uint8(frames[:1])[0]).save(buf, format="PNG")
    return buf.getvalue()


def mp4_comment(data: bytes) -> str | None:
    """The `comment` metadata of MP4 `data` (the parameters `encode_mp4` wrote), None if it has none."""
    import av

    with av.open(io.BytesIO(data)) as container:
        return container.metadata.get(COMMENT_TAG)


class Clip:
    """One item's clip as the worker hands it to the uploader: its frames (uint8) and frame rate."""

    def __init__(self, frames: Any, fps: Any) -> None:
        self.frames = as_uint8(frames)
        self.fps = fps

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of its frames."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    def poster(self):
        """The first frame as a PIL image."""
        from PIL import Image

        return Image.fromarray(self.frames[0])
