"""Offloading as a memory mode (issue 33, item 6): a worker whose device cannot hold a model whole runs it
with model or group offload, says so in its record, is passed over while a worker that holds the model
whole is idle, and never takes an item that does not fit even offloaded.

No GPU here: the workers are CPU workers given a small device with the testing aid `--debug-memory-gb`
(routing compares the needs with it), and their offload hooks move the weights between the CPU and
the CPU — the call path diffusers runs on a GPU, not its memory savings."""
from __future__ import annotations

import numpy as np

from cli.client import Client
from tests.conftest import wait_job, wait_until
from tests.test_faults_routing import log_text
from tests.test_fleet import start_workers
from tests.test_pipelines import pixels, result
from workers.loading.device import Device
from workers.loading.pipelines import PipelineCache
from workers.running.generation import generate
from tests.support.threads import one_thread  # noqa: F401 - an autouse fixture

MODEL = "builtin:tiny-sd"
PARAMS = {"width": 64, "height": 64, "steps": 2, "guidance_scale": 7.5, "scheduler": "pndm"}
WARM = ("--device", "cpu", "--threads", "1", "--preload", MODEL)
SMALL = "0.1"
"""A device that holds the tiny built-ins' 64x64 need only with group offload (0.40 GB whole, 0.04 grouped)."""
TOO_SMALL = "0.02"
"""Below even the group-offloaded need."""


def _make(cache: PipelineCache, offload: str | None):
    pipe, entry = cache.get(MODEL, "txt2img", PARAMS, offload=offload)
    made = generate(cache, pipe, entry, "txt2img", PARAMS, ["a lighthouse"], [""], [11], None, None)
    return pixels(made.images[0]), pipe, entry


def _grouped(module) -> bool:
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return _is_group_offload_enabled(module)


def test_offloaded_calls_make_the_whole_models_image_and_offloading_goes_off_again(models_dir):
    cache = PipelineCache(models_dir, Device("cpu", "fp32", "cpu", simulated_gb=0.1), 2)
    whole, pipe, entry = _make(cache, None)
    assert entry.offload is None and cache.offloaded_models() == {}
    # model CPU offload: accelerate's hooks on the pipeline's modules
    by_model, pipe, entry = _make(cache, "model")
    assert entry.offload == "model" and entry.offloaded is pipe and hasattr(pipe.unet, "_hf_hook")
    assert cache.offloaded_models() == {MODEL: "model"}
    # group offload: diffusers' group hooks on every module, accelerate's gone
    grouped, pipe, entry = _make(cache, "group")
    assert entry.offload == "group" and entry.offloaded is None and not hasattr(pipe.unet, "_hf_hook")
    assert _grouped(pipe.unet) and _grouped(pipe.vae) and _grouped(pipe.text_encoder)
    # an item that fits whole: offloading off again, every module back on the device
    again, pipe, entry = _make(cache, None)
    assert entry.offload is None and not _grouped(pipe.unet) and cache.offloaded_models() == {}
    for a in (by_model, grouped, again):
        assert np.array_equal(a, whole)


def test_a_model_loaded_to_run_offloaded_runs_alone(models_dir):
    cache = PipelineCache(models_dir, Device("cpu", "fp32", "cpu", simulated_gb=0.1), 2)
    cache.load("builtin:tiny-depth")
    pipe, entry = cache.get(MODEL, "txt2img", PARAMS, offload="group")
    assert cache.loaded() == [MODEL] and entry.offload == "group" and _grouped(pipe.unet)


def test_routing_by_memory_mode_with_real_workers(stack_factory, store):
    """'whole' holds the model whole, 'small' only with group offload, 'tiny' not even so."""
    st = stack_factory("offload")
    svcs = start_workers(st, ("whole", *WARM), ("small", *WARM, "--debug-memory-gb", SMALL))
    client = Client(st.env["SDQ_SERVER"])
    records = {w["name"]: w for w in client.workers()}
    assert (records["small"]["offload"], records["small"]["memory_total_gb"]) == ("auto", float(SMALL))
    assert records["whole"]["offload"] == "never"  # a CPU worker's `auto` without the testing aid
    body = {"prompts": ["a lighthouse"], "params": {**PARAMS, "seed": 11, "cache": False}}
    # 1. While 'whole' is idle, 'small' leaves every item to it (without the preference: 1 in 16 by chance).
    makers = []
    for _ in range(4):
        doc = wait_job(client, client.submit(body)["id"])
        assert doc["state"] == "succeeded", doc
        makers.append(doc["items"][0]["worker"])
    assert makers == ["whole"] * 4, makers
    reference = pixels(result(store, doc["items"][0]))
    # 2. Alone, 'small' runs it with group offload, says so, and makes the same image.
    svcs["whole"].stop()
    wait_until(lambda: {w["name"] for w in client.workers()} == {"small"}, "'whole' left the fleet", 60)
    doc = wait_job(client, client.submit(body)["id"], timeout=240)
    assert doc["state"] == "succeeded" and doc["items"][0]["worker"] == "small", doc
    assert np.array_equal(pixels(result(store, doc["items"][0])), reference)
    assert "runs offloaded (group offload)" in log_text(st, "small")
    wait_until(lambda: next(w for w in client.workers() if w["name"] == "small")["offloaded_models"] == {MODEL: "group"},
               "'small' publishes that it runs the model offloaded", 60)
    # 3. 'tiny' is below even the offloaded need: it never takes the item.
    st.worker("tiny", *WARM, "--debug-memory-gb", TOO_SMALL)
    svcs["small"].stop()
    job = client.submit(body)["id"]
    wait_until(lambda: f"job {job}: passing the chunk on" in log_text(st, "tiny"), "'tiny' passed the chunk on", 120)
    assert "even with group offload" in log_text(st, "tiny")
    doc = client.job(job)
    assert doc["state"] == "queued" and doc["items"][0].get("attempts") is None, doc
    client.cancel(job)
