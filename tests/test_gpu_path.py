"""The GPU code path, run on a CPU: the worker's pipeline cache and generation in fp16 and under
simulated memory pressure, in-process on the built-in tiny models (real diffusers pipelines)."""
from __future__ import annotations

import gc
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdq.exceptions import ModelError
from sdq.sources import builtin_path
from workers.builtins import registry as builtin
from workers.loading import checkpoints
from workers.testing import simulate
from workers.loading.device import Device, bf16_native
from workers.running.generation import generate
from sdq.exceptions import OutOfMemory
from workers.loading.pipelines import PipelineCache, is_fatal_device_error
from tests.support.threads import one_thread  # noqa: F401 - an autouse fixture

FP16 = Device("cpu", "fp16", "cpu")
"""A CPU worker started with `--dtype fp16 --force-dtype`: the whole fp16 path."""
FP32 = Device("cpu", "fp32", "cpu")
PARAMS = {"width": 64, "height": 64, "steps": 2, "guidance_scale": 7.5, "scheduler": "pndm", "strength": 0.75,
          "noise_level": 20}


def sketch(size: tuple[int, int] = (64, 64), seed: int = 0) -> Image.Image:
    rs = np.random.RandomState(seed)
    return Image.fromarray((rs.rand(8, 8, 3) * 255).astype("uint8")).resize(size, Image.Resampling.BICUBIC)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(int)


def make(cache: PipelineCache, model: str, task: str, seeds: list[int], images=None, check=None, **params):
    pipe, entry = cache.get(model, task)
    return generate(cache, pipe, entry, task, {**PARAMS, **params}, [f"a harbour {s}" for s in seeds],
                    [""] * len(seeds), seeds, images, None, check)


def memory_check(memory: simulate.SimulatedMemory, size: int, seen: list | None = None):
    """A `generate` check on a simulated device; records (exception being handled, memory held) per call."""
    def check(n: int, low_memory: bool) -> None:
        if seen is not None:
            seen.append((sys.exc_info()[0], memory.in_use(), n, low_memory))
        memory.call(n, size, size, low_memory)
    return check


# -- item 2: fp16 stays fp16 ----------------------------------------------------------------------------

def test_img2img_keeps_the_shared_unet_in_the_workers_dtype(models_dir):
    cache = PipelineCache(models_dir, FP16, 2)
    first = make(cache, "builtin:tiny-sd", "txt2img", [3])
    made = make(cache, "builtin:tiny-sd", "img2img", [3], {"init_image": [sketch()]})
    again = make(cache, "builtin:tiny-sd", "txt2img", [3])
    entry = cache.get("builtin:tiny-sd", "txt2img")[1]
    assert {p.unet.dtype for p in entry.pipelines()} == {torch.float16}
    assert {p.vae.dtype for p in entry.pipelines()} == {torch.float16}
    assert (first.dtype, made.dtype, again.dtype) == ("fp16", "fp16", "fp16")
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))


def test_the_recorded_dtype_is_read_from_the_pipeline(models_dir):
    """A model cast away from the worker's dtype (what `from_pipe` without a dtype did) is reported
    as what it is."""
    cache = PipelineCache(models_dir, FP16, 2)
    pipe, entry = cache.get("builtin:tiny-sd", "txt2img")
    pipe.to(dtype=torch.float32)
    assert make(cache, "builtin:tiny-sd", "txt2img", [1]).dtype == "fp32"


# -- items 3 and 4: out of memory -------------------------------------------------------------------------

def test_out_of_memory_retries_one_image_per_call_with_the_same_images(models_dir):
    cache = PipelineCache(models_dir, FP32, 2)
    batched = make(cache, "builtin:tiny-sd", "txt2img", [5, 6])
    seen: list = []
    # room for one 64x64 image per call, not two
    split = make(cache, "builtin:tiny-sd", "txt2img", [5, 6], check=memory_check(simulate.SimulatedMemory(4096), 64, seen))
    assert (batched.per_call, split.per_call) == (2, 1)
    assert (split.oom_retries, split.low_memory) == (1, False) and "MemoryError" in split.oom_error
    assert [s[2] for s in seen] == [2, 1, 1]
    for a, b in zip(batched.images, split.images):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1
    assert np.abs(pixels(split.images[0]) - pixels(split.images[1])).mean() > 5  # two seeds, two pictures
    assert split.oom_fields() == {"oom_retries": 1, "oom_error": split.oom_error}


def test_retry_starts_outside_the_handler_with_the_failed_calls_memory_freed(models_dir):
    cache = PipelineCache(models_dir, FP32, 2)
    seen: list = []
    gc.disable()  # only the worker's own collection may free cycles
    try:
        made = make(cache, "builtin:tiny-sd", "txt2img", [7], width=128, height=128,
                    check=memory_check(simulate.SimulatedMemory(4096), 128, seen))
    finally:
        gc.enable()
    assert (made.low_memory, made.oom_retries) == (True, 1) and len(made.images) == 1
    first, retry = seen
    assert first == (None, 0, 1, False)
    # the retry: no exception being handled, nothing left of the failed call, in low-memory mode
    assert retry == (None, 0, 1, True)


def test_low_memory_mode_evicts_other_models_and_does_not_slice_attention(models_dir):
    cache = PipelineCache(models_dir, FP32, 2)
    cache.load("builtin:tiny-depth")
    made = make(cache, "builtin:tiny-sd", "txt2img", [7], width=128, height=128,
                check=memory_check(simulate.SimulatedMemory(4096), 128))
    pipe, entry = cache.get("builtin:tiny-sd", "txt2img")
    assert made.low_memory and entry.low_memory
    assert cache.loaded() == ["builtin:tiny-sd"]
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert not [p for p in processors if "Sliced" in p], processors


def test_low_memory_mode_is_left_when_it_did_not_help(models_dir):
    cache = PipelineCache(models_dir, FP32, 2)
    with pytest.raises(OutOfMemory) as info:
        make(cache, "builtin:tiny-sd", "txt2img", [7, 8], width=256, height=256,
             check=memory_check(simulate.SimulatedMemory(4096), 256))
    assert info.value.fields["low_memory"] is True and info.value.fields["oom_retries"] == 3
    pipe, entry = cache.get("builtin:tiny-sd", "txt2img")
    assert not entry.low_memory and not pipe.vae.use_slicing and not pipe.vae.use_tiling
    # the next batch that fits runs normally, the whole batch in one call
    made = make(cache, "builtin:tiny-sd", "txt2img", [7, 8], check=memory_check(simulate.SimulatedMemory(8192), 64))
    assert (made.low_memory, made.per_call, made.oom_retries) == (False, 2, 0)


# -- item 5: eviction and failed loads ---------------------------------------------------------------------

def test_eviction_frees_the_old_model_before_the_next_one_loads(models_dir):
    import weakref

    cache = PipelineCache(models_dir, FP32, 1)
    pipe, entry = cache.get("builtin:tiny-sd", "img2img")
    # the hooks low-memory mode installs on CUDA (model CPU offload), here pointed at the CPU
    pipe.enable_model_cpu_offload(device="cpu")
    old = weakref.ref(pipe.unet)
    del pipe, entry
    alive_at_load: list[bool] = []
    load = cache._load

    def spy(model_id: str):
        alive_at_load.append(old() is not None)
        return load(model_id)

    cache._load = spy
    gc.collect()
    gc.disable()  # reference cycles must be broken by the cache itself
    try:
        cache.get("builtin:tiny-depth", "depth2img")
    finally:
        gc.enable()
    assert alive_at_load == [False]
    assert cache.loaded() == ["builtin:tiny-depth"]


def test_a_failed_load_raises_and_leaves_nothing_behind(models_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(builtin_path(models_dir, "tiny-sd"), broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00\x00\x00not a safetensors file")
    cache = PipelineCache(models_dir, FP32, 2)
    cache.load("builtin:tiny-sd")
    with pytest.raises(ModelError, match="cannot load model"):
        cache.get(str(broken), "txt2img")
    assert str(broken) not in cache.loaded()
    assert len(make(cache, "builtin:tiny-sd", "txt2img", [1]).images) == 1


def test_out_of_memory_while_loading_evicts_the_other_models_and_loads_again(models_dir):
    cache = PipelineCache(models_dir, FP32, 2)
    cache.load("builtin:tiny-sd")
    place, seen = cache._place, []

    def tight(entry):  # a device with room for one model: the first placement beside tiny-sd fails
        seen.append(cache.loaded())
        if len(seen) == 1:
            raise MemoryError("simulated: no room for a second model")
        place(entry)

    cache._place = tight
    cache.get("builtin:tiny-depth", "depth2img")
    assert seen == [["builtin:tiny-sd"], []] and cache.loaded() == ["builtin:tiny-depth"]


# -- item 7: the safety checker -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checked_models(tmp_path_factory) -> dict[str, Path]:
    """tiny-sd with a real safety checker that flags every image, and one that flags none."""
    root = tmp_path_factory.mktemp("checked")
    out = {"flags": root / "flags", "passes": root / "passes"}
    builtin.build_tiny_sd(out["flags"], safety_threshold=-2.0)
    builtin.build_tiny_sd(out["passes"], safety_threshold=2.0)
    return out


def test_the_safety_checkers_verdict_is_recorded_and_the_operator_can_turn_it_off(models_dir, checked_models):
    cache = PipelineCache(models_dir, FP32, 3)
    flagged = make(cache, str(checked_models["flags"]), "txt2img", [1, 2])
    passed = make(cache, str(checked_models["passes"]), "txt2img", [1, 2])
    plain = make(cache, "builtin:tiny-sd", "txt2img", [1])
    assert (flagged.nsfw, passed.nsfw, plain.nsfw) == ([True, True], [False, False], [None])
    assert pixels(flagged.images[0]).max() == 0 and pixels(passed.images[0]).max() > 0  # diffusers blacks them out
    off = PipelineCache(models_dir, FP32, 1, safety_checker=False)
    unchecked = make(off, str(checked_models["flags"]), "txt2img", [1, 2])
    assert unchecked.nsfw == [None, None]
    assert np.abs(pixels(unchecked.images[0]) - pixels(passed.images[0])).max() <= 1


# -- items 9 and 10: checkpoints as published ------------------------------------------------------------------

def test_a_depth_model_naming_a_removed_feature_extractor_class_loads(models_dir, tmp_path):
    old = tmp_path / "old-depth"
    shutil.copytree(builtin_path(models_dir, "tiny-depth"), old)
    index = json.loads((old / "model_index.json").read_text())
    index["feature_extractor"] = ["transformers", "DPTFeatureExtractor"]
    (old / "model_index.json").write_text(json.dumps(index))
    config = json.loads((old / "feature_extractor" / "preprocessor_config.json").read_text())
    config.pop("image_processor_type", None)
    config["feature_extractor_type"] = "DPTFeatureExtractor"
    (old / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(config))
    assert checkpoints.replacement_class("transformers", "DPTFeatureExtractor") == "DPTImageProcessor"
    assert checkpoints.replacement_class("transformers", "CLIPFeatureExtractor") == "CLIPImageProcessor"
    cache = PipelineCache(models_dir, FP32, 2)
    init = sketch()
    got = make(cache, str(old), "depth2img", [4], {"init_image": [init]})
    want = make(cache, "builtin:tiny-depth", "depth2img", [4], {"init_image": [init]})
    assert np.abs(pixels(got.images[0]) - pixels(want.images[0])).max() <= 1


def test_fp16_weights_are_loaded_when_the_model_has_them(models_dir, tmp_path):
    import diffusers

    base = diffusers.DiffusionPipeline.from_pretrained(builtin_path(models_dir, "tiny-sd"), dtype=torch.float16)
    half_only, both = tmp_path / "half-only", tmp_path / "both"
    base.save_pretrained(half_only, variant="fp16")
    shutil.copytree(builtin_path(models_dir, "tiny-sd"), both)
    base.save_pretrained(both, variant="fp16")
    assert checkpoints.choose_variant(half_only, half=False) == "fp16"  # the only weights there are
    assert checkpoints.choose_variant(both, half=True) == "fp16"
    assert checkpoints.choose_variant(both, half=False) is None
    assert checkpoints.choose_variant(builtin_path(models_dir, "tiny-sd"), half=True) is None
    cache = PipelineCache(models_dir, FP16, 3)
    a = make(cache, str(half_only), "txt2img", [2])
    b = make(cache, str(both), "txt2img", [2])
    c = make(cache, "builtin:tiny-sd", "txt2img", [2])
    assert a.dtype == b.dtype == c.dtype == "fp16"
    assert np.array_equal(pixels(a.images[0]), pixels(c.images[0]))
    assert np.array_equal(pixels(b.images[0]), pixels(c.images[0]))


# -- item 11: upscale micro-batches -------------------------------------------------------------------------------

def test_upscale_calls_make_one_image_unless_the_operator_raises_it(models_dir):
    init = {"init_image": [sketch((32, 32), 1), sketch((32, 32), 2)]}
    capped = make(PipelineCache(models_dir, FP32, 1), "builtin:tiny-upscaler", "upscale", [1, 2], init,
                  width=32, height=32)
    raised = make(PipelineCache(models_dir, FP32, 1, upscale_batch=2), "builtin:tiny-upscaler", "upscale", [1, 2],
                  init, width=32, height=32)
    assert (capped.per_call, raised.per_call) == (1, 2)
    assert capped.images[0].size == (128, 128)
    for a, b in zip(capped.images, raised.images):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1


# -- items 6 and 8: device checks ---------------------------------------------------------------------------------

@pytest.mark.unit
def test_bf16_needs_compute_capability_8():
    assert not bf16_native((7, 5)) and not bf16_native((7, 0))  # T4, V100: emulated
    assert bf16_native((8, 0)) and bf16_native((8, 9)) and bf16_native((9, 0))


@pytest.mark.unit
def test_sticky_device_errors_are_told_apart_from_out_of_memory():
    assert is_fatal_device_error(torch.AcceleratorError("CUDA error: an illegal memory access was encountered"))
    assert is_fatal_device_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_fatal_device_error(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_fatal_device_error(RuntimeError("CUDA error: out of memory"))
    assert not is_fatal_device_error(MemoryError()) and not is_fatal_device_error(ValueError("bad size"))
    with pytest.raises(torch.AcceleratorError):
        fatal = simulate.SimulatedFatalError(after=1)
        fatal.call()
        fatal.call()
