"""Video foundations: the tiny Wan and LTX built-ins in plain diffusers (generated the same every time, the
asked frames and size, seeded), and their frames as an H.264 MP4 and a poster PNG read back with PyAV."""
from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from workers.running import video
from tests.support.families import digests
from tests.support.threads import one_thread  # noqa: F401 - an autouse fixture

PIPELINES = {"tiny-wan": "WanPipeline", "tiny-ltx": "LTXPipeline"}
"""Built-in text-to-video model -> the diffusers class its folder loads as."""

IMAGE_PIPELINES = {"tiny-wan-i2v": "WanImageToVideoPipeline", "tiny-ltx": "LTXImageToVideoPipeline"}
"""Built-in image-to-video model -> its class (tiny-ltx's components run both LTX pipelines)."""

FRAMES = {"tiny-wan": 5, "tiny-wan-i2v": 5, "tiny-ltx": 9}
"""A short valid clip per family: 4k+1 frames for Wan (4x temporal VAE), 8k+1 for LTX (8x)."""

SIZE = {"tiny-wan": (64, 48), "tiny-wan-i2v": (64, 48), "tiny-ltx": (96, 64)}
"""A non-square (width, height) per family: multiples of 16 for Wan, of 32 for LTX."""


@pytest.fixture(scope="module")
def built(models_dir) -> dict[str, Path]:
    from workers.builtins.registry import ensure_builtin

    return {name: ensure_builtin(models_dir, name) for name in {**PIPELINES, **IMAGE_PIPELINES}}


@pytest.fixture(scope="module")
def pipes(built) -> dict:
    import diffusers
    import torch

    loaded = {}
    for name, cls in PIPELINES.items():
        pipe = getattr(diffusers, cls).from_pretrained(built[name], dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        loaded[name] = pipe
    return loaded


def make(pipe, name: str, seed: int, prompt: str = "a lighthouse at dusk") -> np.ndarray:
    import torch

    width, height = SIZE[name]
    out = pipe(prompt, negative_prompt="blurry", num_frames=FRAMES[name], width=width, height=height,
               num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return out.frames[0]


@pytest.fixture(scope="module")
def clips(pipes) -> dict[str, np.ndarray]:
    return {name: make(pipe, name, seed=1) for name, pipe in pipes.items()}


@pytest.mark.parametrize("name", {**PIPELINES, **IMAGE_PIPELINES})
def test_generated_the_same_bytes_every_time(tmp_path, built, name):
    from workers.builtins.registry import BUILDERS

    BUILDERS[name](tmp_path / "again")
    again = digests(tmp_path / "again")
    assert again == digests(built[name])
    assert {"tokenizer/tokenizer.json", "text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "transformer/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"} <= set(again)


def test_components_are_the_real_models_classes(pipes):
    wan, ltx = pipes["tiny-wan"], pipes["tiny-ltx"]
    assert type(wan.text_encoder).__name__ == "UMT5EncoderModel"
    assert type(wan.scheduler).__name__ == "UniPCMultistepScheduler"
    assert wan.scheduler.config.prediction_type == "flow_prediction" and wan.scheduler.config.use_flow_sigmas
    assert (wan.vae_scale_factor_temporal, wan.vae_scale_factor_spatial) == (4, 8)
    assert type(ltx.text_encoder).__name__ == "T5EncoderModel"
    assert (ltx.vae_temporal_compression_ratio, ltx.vae_spatial_compression_ratio) == (8, 32)
    for pipe in (wan, ltx):  # built locally: a prompt's words are known characters, not <unk>
        ids = pipe.tokenizer("a lighthouse at dusk").input_ids
        assert pipe.tokenizer.unk_token_id not in ids and ids[-1] == pipe.tokenizer.eos_token_id


@pytest.mark.parametrize("name", PIPELINES)
def test_makes_the_asked_frames_at_the_asked_size_seeded(pipes, clips, name):
    width, height = SIZE[name]
    clip = clips[name]
    assert clip.shape == (FRAMES[name], height, width, 3)
    assert np.abs(clip[0] - clip[-1]).mean() > 0.01  # frames differ over time
    assert np.array_equal(make(pipes[name], name, seed=1), clip)
    assert np.abs(make(pipes[name], name, seed=2) - clip).mean() > 0.02
    assert np.abs(make(pipes[name], name, seed=1, prompt="a red bicycle") - clip).mean() > 0.0005


@pytest.mark.parametrize("name", IMAGE_PIPELINES)
def test_image_to_video_follows_the_image_and_the_seed(built, name):
    """The image conditions the clip (Wan 2.1 I2V: also through the CLIP image encoder)."""
    import diffusers
    import torch

    pipe = getattr(diffusers, IMAGE_PIPELINES[name]).from_pretrained(built[name], dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    width, height = SIZE[name]
    text: dict = {"prompt": "a lighthouse at dusk", "negative_prompt": "blurry"}  # Wan I2V cleans it with ftfy
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    flat = Image.new("RGB", (width, height), (200, 40, 30))

    def run(image, seed: int) -> np.ndarray:
        out = pipe(image=image, num_frames=FRAMES[name], width=width, height=height, num_inference_steps=3,
                   generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **text)
        return out.frames[0]

    clip = run(noise, 1)
    assert clip.shape == (FRAMES[name], height, width, 3)
    assert np.array_equal(run(noise, 1), clip)
    assert np.abs(run(noise, 2) - clip).mean() > 0.02
    assert np.abs(run(flat, 1) - clip).mean() > 0.002


class Stop(Exception):
    """Raised from the step hook, as the worker's cancel does (`workers.running.generation`)."""


@pytest.mark.parametrize("name", PIPELINES)
def test_step_hook_runs_per_step_and_a_raise_skips_the_vae_decode(pipes, name):
    """The worker's progress and cancel hook fits video pipelines: one call per denoising step, and raising
    in it (the worker's cancel) ends the call before the VAE decodes every frame."""
    import torch

    pipe = pipes[name]
    decodes: list[int] = []
    handle = pipe.vae.decoder.register_forward_pre_hook(lambda module, args: decodes.append(1))
    steps: list[int] = []

    def hook(p, i, t, kwargs, stop_at=None):
        steps.append(i)
        if i == stop_at:
            raise Stop
        return kwargs

    width, height = SIZE[name]
    call = dict(prompt="a lighthouse", num_frames=FRAMES[name], width=width, height=height, num_inference_steps=4,
                generator=torch.Generator("cpu").manual_seed(1), output_type="np")
    try:
        pipe(**call, callback_on_step_end=hook)
        assert steps == [0, 1, 2, 3] and decodes
        steps.clear(), decodes.clear()
        with pytest.raises(Stop):
            pipe(**call, callback_on_step_end=lambda p, i, t, kw: hook(p, i, t, kw, stop_at=1))
        assert steps == [0, 1] and not decodes
    finally:
        handle.remove()


def decode(data: bytes) -> tuple[list[np.ndarray], av.video.stream.VideoStream, dict]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        return frames, stream, dict(container.metadata)


@pytest.mark.parametrize("name, fps", [("tiny-wan", 16), ("tiny-ltx", 24)])
def test_mp4_decodes_to_the_frames_at_the_fps_with_the_parameters(clips, name, fps):
    clip = clips[name]
    infotext = "a lighthouse at dusk, café\nNegative prompt: blurry\nSteps: 3, Seed: 1, Frames: 5, FPS: 16"
    data = video.encode_mp4(clip, fps, comment=infotext)
    frames, stream, metadata = decode(data)
    assert len(frames) == len(clip) and frames[0].shape == clip.shape[1:]
    assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    assert stream.average_rate == fps
    assert metadata[video.COMMENT_TAG] == infotext == video.mp4_comment(data)
    assert data.index(b"moov") < data.index(b"mdat")  # faststart: playable while downloading
    # H.264 is lossy (and a random model's frames are noisy), but each decoded frame is nearest its own source.
    source = video.as_uint8(clip).astype(int)
    distance = np.array([[np.abs(decoded.astype(int) - original).mean() for original in source] for decoded in frames])
    assert list(distance.argmin(axis=1)) == list(range(len(clip))), distance.round(1)


@pytest.mark.parametrize("height, width", [(47, 63), (46, 64), (50, 62)])
def test_pil_frames_and_odd_sides_are_padded_to_even(clips, height, width):
    clip = video.as_uint8(clips["tiny-ltx"])[:, :height, :width]
    frames, stream, _ = decode(video.encode_mp4([Image.fromarray(f) for f in clip], 8))
    assert (stream.width, stream.height) == (width + width % 2, height + height % 2) and len(frames) == len(clip)
    distance = [np.abs(frames[0][:height, :width].astype(int) - f).mean() for f in clip.astype(int)]
    assert int(np.argmin(distance)) == 0


def test_colours_survive_the_bt709_conversion():
    """Flat colours come back within H.264's rounding: the matrix and the stream's colour tags agree."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128), (250, 200, 30), (0, 0, 0), (255, 255, 255)]
    clip = np.stack([np.broadcast_to(np.array(c, np.uint8), (32, 32, 3)) for c in colours])
    frames, stream, _ = decode(video.encode_mp4(clip, 8))
    assert (stream.codec_context.colorspace, stream.codec_context.color_range) == (1, 1)  # BT.709, limited
    for frame, colour in zip(frames, colours):
        assert np.abs(frame[8:24, 8:24].astype(int) - colour).max() <= 3, (colour, frame[16, 16])


def test_poster_is_the_first_frame_as_png(clips):
    clip = clips["tiny-ltx"]
    poster = Image.open(io.BytesIO(video.poster_png(clip)))
    assert poster.format == "PNG" and poster.size == (clip.shape[2], clip.shape[1])
    assert np.array_equal(np.asarray(poster.convert("RGB")), video.as_uint8(clip)[0])


@pytest.mark.parametrize("fps", [0, 0.5, 121, float("nan"), "24", None, True])
def test_bad_fps_is_refused_naming_the_value(fps):
    with pytest.raises(ValueError, match=f"fps .*got {fps!r}"):
        video.encode_mp4(np.zeros((1, 16, 16, 3), np.uint8), fps)


@pytest.mark.parametrize("frames", [
    np.zeros((0, 16, 16, 3), np.uint8), np.zeros((video.MAX_FRAMES + 1, 2, 2, 3), np.uint8), [],
])
def test_bad_frame_counts_are_refused_naming_the_value(frames):
    with pytest.raises(ValueError, match=f"frames must be .* got {len(frames)}"):
        video.encode_mp4(frames, 16)


@pytest.mark.parametrize("frames, message", [
    (np.zeros((2, 16, 16)), r"shaped \(frames, height, width, 3\), got \(2, 16, 16\)"),
    (np.full((2, 16, 16, 3), np.nan), "NaN"),
    (np.zeros((2, 16, 16, 3), np.int64), "uint8 or float .* got int64"),
    ([Image.new("RGB", (16, 16)), Image.new("RGB", (32, 16))], r"one size, got \[\(16, 16\), \(32, 16\)\]"),
])
def test_bad_frames_are_refused_saying_why(frames, message):
    with pytest.raises(ValueError, match=message):
        video.encode_mp4(frames, 16)


def test_check_frame_count_and_fps():
    assert video.check_frame_count(np.int64(81)) == 81
    assert video.check_fps(16) == 16 and video.check_fps(29.97) == video.Fraction(2997, 100)
    with pytest.raises(ValueError, match="got 2.0"):
        video.check_frame_count(2.0)
