"""The GPU code path through real workers on a CPU: a forced-fp16 worker, a worker on a simulated
small device, one whose device breaks for good, and models that ship a safety checker."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from cli.client import Client
from sdq.infotext import parse_infotext
from tests.conftest import wait_job
from tests.test_pipelines import MODELS, direct, pixels, result, sketch, upload

pytestmark = pytest.mark.slow  # real workers: each test takes 20-60 s on 2 busy cores

FP16_MAX_DIFF = 4
"""Largest per-pixel difference (of 255) between a forced-fp16 CPU worker's image and plain
diffusers in fp32 (measured on the built-in models: 1-2; another seed differs by ~40 on average)."""
FP16_MEAN_DIFF = 0.5
"""Largest mean per-pixel difference (of 255) for the same comparison (measured: ~0.1)."""

HALF = ("--device", "cpu", "--dtype", "fp16", "--force-dtype", "--threads", "1")
FULL = ("--device", "cpu", "--threads", "1")


def run_job(client: Client, body: dict, state: str = "succeeded") -> dict:
    doc = wait_job(client, client.submit(body)["id"], timeout=240)
    assert doc["state"] == state, [it.get("error") for it in doc["items"]]
    return doc


def info_of(store, item: dict) -> dict:
    return parse_infotext(result(store, item).info["parameters"])


# -- a forced-fp16 worker ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def half(stack_factory):
    st = stack_factory("half")
    st.worker("half", *HALF, "--max-batch", "2", "--preload", "builtin:tiny-sd")
    yield Client(st.env["SDQ_SERVER"])
    st.stop()


def test_forced_fp16_worker_keeps_fp16_after_img2img(half, store):
    body = {"prompts": ["a lighthouse"], "params": {"width": 64, "height": 64, "steps": 3, "seed": 5}}
    first = run_job(half, body)["items"][0]
    key = upload(half, sketch((64, 64), 3))
    middle = run_job(half, {"prompts": ["a lighthouse"], "pipeline": "img2img",
                            "params": {"steps": 3, "seed": 5, "init_image": key}})["items"][0]
    again = run_job(half, {**body, "params": {**body["params"], "cache": False}})["items"][0]  # run, not cached
    for item in (first, middle, again):
        assert item["dtype"] == "fp16" and info_of(store, item)["Dtype"] == "fp16", item
    # the model was not cast to fp32 by the img2img job: the same image as before it, to the bit
    assert np.array_equal(pixels(result(store, first)), pixels(result(store, again)))


@pytest.mark.parametrize("task", ["txt2img", "img2img", "upscale", "depth2img"])
def test_forced_fp16_images_match_fp32_diffusers(half, store, models_dir, task):
    size = (32, 32) if task == "upscale" else (64, 64)
    params: dict = {"steps": 3}
    extra: dict = {}
    init = None
    if task == "txt2img":
        params.update(width=64, height=64)
        extra = {"width": 64, "height": 64}
    else:
        init = sketch(size, seed=len(task))
        params["init_image"] = upload(half, init)
        key, value = ("noise_level", 20) if task == "upscale" else ("strength", 0.75)
        params[key] = extra[key] = value
    doc = run_job(half, {"items": [{"prompt": "a harbour", "seed": s} for s in (31, 32)], "model": MODELS[task],
                         "pipeline": task, "params": params})
    for item in doc["items"]:
        got = pixels(result(store, item))
        want = direct(models_dir, task, "a harbour", item["seed"], 3, image=init, **extra)
        diff = np.abs(got - want)
        assert diff.max() <= FP16_MAX_DIFF and diff.mean() <= FP16_MEAN_DIFF, (task, diff.max(), diff.mean())
        assert item["dtype"] == "fp16"
        # two items, --max-batch 2: one call, except the x4 upscaler (one image per call by default)
        assert item["batch"] == (1 if task == "upscale" else 2), item


# -- a small device: out of memory ----------------------------------------------------------------------

def test_out_of_memory_splits_the_batch_before_low_memory_mode(stack_factory, store, models_dir):
    """Room for one 64x64 image per call (`--debug-oom-pixels 4096`), batches of two: the batch is
    made one image per call, the same images, and the model stays out of low-memory mode."""
    st = stack_factory("split")
    st.worker("split", *FULL, "--max-batch", "2", "--debug-oom-pixels", "4096", "--preload", "builtin:tiny-sd")
    client = Client(st.env["SDQ_SERVER"])
    doc = run_job(client, {"items": [{"prompt": "a mill", "seed": s} for s in (41, 42)],
                           "params": {"width": 64, "height": 64, "steps": 3}})
    for item in doc["items"]:
        assert (item["batch"], item["oom_retries"], item["low_memory"]) == (1, 1, None), item
        want = direct(models_dir, "txt2img", "a mill", item["seed"], 3, width=64, height=64)
        assert np.abs(pixels(result(store, item)) - want).max() <= 1
    st.stop()


# -- a device that breaks for good -------------------------------------------------------------------------

def test_a_sticky_device_error_fails_the_batch_and_the_worker_exits(stack_factory):
    st = stack_factory("sticky")
    svc = st.worker("sticky", *FULL, "--debug-fatal-after", "1", "--preload", "builtin:tiny-sd")
    client = Client(st.env["SDQ_SERVER"])
    body = {"prompts": ["a bridge"], "params": {"width": 64, "height": 64, "steps": 2}}
    run_job(client, body)  # the first call works
    doc = run_job(client, body, state="failed")
    item = doc["items"][0]
    assert "device error on worker sticky" in item["error"] and "illegal memory access" in item["error"], item
    assert "exits to be restarted" in item["error"]
    try:
        code = svc.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not exit after a sticky device error")
    assert code == 3
    st.stop()


# -- the safety checker ---------------------------------------------------------------------------------------

def test_safety_checker_verdict_per_item_and_the_operator_switch(stack_factory, store, tmp_path_factory):
    from workers.builtins.registry import build_tiny_sd

    folder = tmp_path_factory.mktemp("nsfw") / "tiny-sd-checked"
    build_tiny_sd(folder, safety_threshold=-2.0)  # a real checker that flags every image
    st = stack_factory("checker", env={"SDQ_MODELS": str(folder)})
    client = Client(st.env["SDQ_SERVER"])
    body = {"prompts": ["a garden"], "model": str(folder), "params": {"width": 64, "height": 64, "steps": 2}}
    checked = st.worker("checked", *FULL)
    item = run_job(client, body)["items"][0]
    assert item["nsfw"] is True, item
    assert info_of(store, item)["Safety checker"] == "flagged"
    assert pixels(result(store, item)).max() == 0  # what the checker does to a flagged image
    checked.stop()
    st.worker("unchecked", *FULL, "--no-safety-checker")
    item = run_job(client, body)["items"][0]
    assert item["nsfw"] is None and "Safety checker" not in info_of(store, item), item
    assert pixels(result(store, item)).max() > 0
    st.stop()
