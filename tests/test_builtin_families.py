"""The tiny SDXL and SD3 built-ins, in plain diffusers: generated the same every time, shaped like
the real families (AutoPipeline picks their classes, their family parameters change the image)."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from sdq import families
from sdq.modelinfo import BUILTIN_SIDES
from sdq.models import BUILTIN_FAMILIES

BUILTINS = {"tiny-sdxl": ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"),
            "tiny-sd3": ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")}


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(models_dir) -> dict[str, Path]:
    from workers.builtins.registry import ensure_builtin

    return {name: ensure_builtin(models_dir, name) for name in BUILTINS}


def load(path: Path):
    import diffusers
    import torch

    from workers.loading.checkpoints import absent_components

    pipe = diffusers.AutoPipelineForText2Image.from_pretrained(path, dtype=torch.float32, **absent_components(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make(pipe, seed: int = 1, **kw) -> np.ndarray:
    import torch

    out = pipe("a lighthouse", num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(seed), **kw)
    return np.asarray(out.images[0]).astype(int)


@pytest.mark.parametrize("name", BUILTINS)
def test_generated_the_same_bytes_every_time(tmp_path, built, name):
    from workers.builtins.registry import BUILDERS

    BUILDERS[name](tmp_path / "again")
    assert digests(tmp_path / "again") == digests(built[name])
    assert families.detect(built[name]) == BUILTIN_FAMILIES[f"builtin:{name}"]


@pytest.mark.parametrize("name", BUILTINS)
def test_autopipeline_picks_the_family_classes_and_both_pipelines_run(built, name):
    import diffusers
    import torch

    torch.set_num_threads(1)
    txt2img_cls, img2img_cls = BUILTINS[name]
    pipe = load(built[name])
    assert type(pipe).__name__ == txt2img_cls
    start = time.monotonic()
    first = make(pipe)
    side = BUILTIN_SIDES[f"builtin:{name}"]
    assert first.shape == (side, side, 3)  # the model's own default size, as the producer's
    assert time.monotonic() - start < 30  # ~1 s on one idle core; generous for a loaded machine
    assert first.std() > 10  # a picture, not a flat field
    assert np.abs(first - make(pipe, seed=2)).mean() > 5
    img2img = diffusers.AutoPipelineForImage2Image.from_pipe(pipe)
    assert type(img2img).__name__ == img2img_cls
    from PIL import Image

    init = Image.fromarray(first.astype("uint8"))
    out = make(img2img, image=init, strength=0.6)
    assert out.shape == first.shape and np.abs(out - first).mean() > 1


def test_sdxl_size_conditioning_changes_the_image(built):
    pipe = load(built["tiny-sdxl"])
    plain = make(pipe, width=64, height=64)
    assert np.array_equal(plain, make(pipe, width=64, height=64, original_size=(64, 64), target_size=(64, 64)))
    # weak on random weights (~0.4-2/255 on average) but far above float noise (~1e-4)
    assert np.abs(plain - make(pipe, width=64, height=64, original_size=(512, 512))).mean() > 0.1
    assert np.abs(plain - make(pipe, width=64, height=64, crops_coords_top_left=(32, 0))).mean() > 0.1


def test_sd3_max_sequence_length_changes_the_image_and_has_no_t5(built):
    pipe = load(built["tiny-sd3"])
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert pipe.vae.config.latent_channels == 16
    short = make(pipe, width=64, height=64, max_sequence_length=77)
    assert np.abs(short - make(pipe, width=64, height=64, max_sequence_length=256)).mean() > 0.5
