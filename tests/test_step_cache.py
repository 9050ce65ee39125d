"""`params.step_cache` on tiny Flux through the real queue: the cached image differs from the uncached one, is
recorded in infotext and manifest and made again from `sdq inspect`'s resubmit body; the warm transformer
carries no hook after it, so the next plain job equals the image the fresh worker made first, bit for bit
(also after a call that raised with the cache on); refused on SD with a 422 naming `params.step_cache`; a
worker operator's default applies to jobs that give none."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import requests
import torch

from cli.client import Client
from sdq.infotext import parse_infotext
from tests.conftest import wait_job, wait_until
from tests.test_pipelines import pixels, result
from workers import options as worker_options
from workers.loading.cpu_paths import CpuPath
from workers.loading.device import Device
from workers.loading.pipelines import PipelineCache
from workers.options.step_cache import hooked
from workers.running.generation import generate
from workers.running.warmstate import undo_or_drop

FLUX = "builtin:tiny-flux"
PARAMS = {"width": 64, "height": 64, "steps": 8, "seed": 7, "cache": False}
CACHED = {"method": "MagCache", "threshold": 1.0, "max_skip_steps": 3, "retention_ratio": 0.2}
"""A MagCache that skips steps on the tiny random model (its images then differ from the uncached ones)."""


@pytest.fixture(scope="module")
def flux_stack(stack_factory):
    st = stack_factory("stepcache")
    st.worker("w-cache", "--device", "cpu", "--threads", "1", "--preload", FLUX)
    return st


@pytest.fixture(scope="module")
def client(flux_stack) -> Client:
    return Client(flux_stack.env["SDQ_SERVER"])


def _run(client: Client, params: dict, prompt: str = "a lighthouse at dusk") -> dict:
    doc = wait_job(client, client.submit({"model": FLUX, "prompts": [prompt], "params": params})["id"], timeout=240)
    assert doc["state"] == "succeeded", [it.get("error") for it in doc["items"]]
    return doc


def test_step_cache_runs_is_recorded_and_leaves_the_warm_transformer_plain(client, store, tmp_path):
    # 1. The fresh worker's first image, without a cache.
    fresh = pixels(result(store, _run(client, PARAMS)["items"][0]))
    # 2. With the step cache: another image, and it says how it was made.
    doc = _run(client, {**PARAMS, "step_cache": CACHED})
    img = result(store, doc["items"][0])
    assert np.abs(pixels(img) - fresh).max() > 0, "the cache changed nothing: the test could not fail"
    info = parse_infotext(img.info["parameters"])
    assert info["Step cache"] == "MagCache threshold=1.0 max_skip_steps=3 retention_ratio=0.2", info
    manifest = json.loads(wait_until(lambda: _get(store, f"jobs/{doc['id']}/manifest.json"), "manifest"))
    assert manifest["items"][0]["params"]["step_cache"] == CACHED
    # 3. The next plain job on the same warm worker makes the fresh worker's image, bit for bit.
    again = pixels(result(store, _run(client, PARAMS)["items"][0]))
    assert np.array_equal(again, fresh)
    # 4. `sdq inspect` reads the cache back, and its resubmit body makes the cached image again.
    path = tmp_path / "cached.png"
    path.write_bytes(store.get(doc["items"][0]["key"]))
    out = subprocess.run([sys.executable, "-m", "cli", "inspect", "--json", str(path)], capture_output=True,
                         text=True, timeout=120, check=True)
    body = json.loads(out.stdout)["resubmit"]
    assert body["params"]["step_cache"] == CACHED
    body["params"]["cache"] = False  # made again, not copied from the result cache
    remade = wait_job(client, client.submit(body)["id"], timeout=240)
    assert np.array_equal(pixels(result(store, remade["items"][0])), pixels(img))


def test_sd_is_refused_naming_the_field(flux_stack):
    resp = requests.post(flux_stack.env["SDQ_SERVER"] + "/v1/jobs", timeout=10, json={
        "model": "builtin:tiny-sd", "prompts": ["a"], "params": {"steps": 2, "step_cache": {"method": "MagCache"}}})
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert (err["field"], err["code"]) == ("params.step_cache", "unsupported_step_cache")


def test_an_operators_default_applies_to_jobs_that_give_none(stack_factory, store):
    """A worker started with `--option-default step_cache=...`: a job without the option runs with it (and says
    so); `{"method": "none"}` keeps it off."""
    st = stack_factory("stepcache-default")
    st.worker("w-default", "--device", "cpu", "--threads", "1", "--preload", FLUX,
              "--option-default", "step_cache=" + json.dumps(CACHED))
    client = Client(st.env["SDQ_SERVER"])
    plain = result(store, _run(client, PARAMS)["items"][0])
    asked = result(store, _run(client, {**PARAMS, "step_cache": CACHED})["items"][0])
    off = result(store, _run(client, {**PARAMS, "step_cache": {"method": "none"}})["items"][0])
    assert np.array_equal(pixels(plain), pixels(asked))
    assert parse_infotext(plain.info["parameters"])["Step cache"].startswith("MagCache")
    assert np.abs(pixels(off) - pixels(plain)).max() > 0
    assert "Step cache" not in parse_infotext(off.info["parameters"])


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("method", ["FirstBlockCache", "TaylorSeerCache", "MagCache", "FasterCache",
                                    "PyramidAttentionBroadcast"])
def test_each_method_is_removed_after_its_chunk_also_after_a_call_that_raised(models_dir, method):
    """In the worker's own code path (apply, a call, the runner's undo): hooks on while the call runs, none
    after, and the next plain image equals the one made before the cache was ever on."""
    torch.set_num_threads(1)
    cache = PipelineCache(models_dir, Device("cpu", "fp32", "cpu", CpuPath()))
    pipe, entry = cache.get(FLUX, "txt2img")
    plain = {"width": 64, "height": 64, "steps": 6, "guidance_scale": 3.5, "scheduler": "flow_euler",
             "max_sequence_length": 64}
    before = _image(cache, pipe, entry, plain)
    from sdq.options.step_cache import checked

    params = {**plain, "step_cache": checked({"method": method}, "flux")}
    seen: list[list[str]] = []

    def raise_at_step_2(p, i, t, kwargs):
        seen.append(hooked(p.transformer))
        if i == 2:
            raise _Boom
        return kwargs

    worker_options.apply(cache, pipe, entry, params)
    try:
        with pytest.raises(_Boom):
            generate(cache, pipe, entry, "txt2img", params, ["a lighthouse"], [""], [7], None, raise_at_step_2)
    finally:
        undo_or_drop(cache, pipe, entry, params, broken=False)
    assert seen and all(seen), "no cache hook was on during the call"
    assert hooked(pipe.transformer) == [] and not pipe.transformer.is_cache_enabled
    assert np.array_equal(_image(cache, pipe, entry, plain), before)


def _image(cache, pipe, entry, params) -> np.ndarray:
    made = generate(cache, pipe, entry, "txt2img", params, ["a lighthouse"], [""], [7], None, None)
    return pixels(made.images[0])


def _get(store, key: str) -> bytes | None:
    try:
        return store.get(key)
    except Exception:  # noqa: BLE001 - not written yet
        return None
