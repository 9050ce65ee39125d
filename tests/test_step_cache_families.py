"""`params.step_cache` on the families after Flux, through the real queue on their tiny built-ins: Flux.2 Klein,
Qwen-Image, Wan and LTX-Video (video chunks take the same worker hook). Per family a cached job makes another
image or clip and says how (item parameters, infotext or the MP4's metadata); the warm transformer carries no
hook after it, so the next plain job makes the first plain job's image or first frame bit for bit. In the worker's
own code: a method the model's family does not take (a job whose family was not known at submit) fails naming
the field, Wan's TaylorSeer hooks its blocks' attention modules, and Flux.2 dev's pipeline (which opens no cache
context) gets one from the hook; Wan 2.2's second expert is hooked and unhooked with the first."""
from __future__ import annotations

import numpy as np
import pytest

from cli.client import Client
from sdq.exceptions import ModelError
from sdq.infotext import parse_infotext
from sdq.modelinfo import BUILTIN_FAMILIES
from sdq.options.step_cache import checked
from tests.support.families import one_worker, run
from tests.test_pipelines import pixels, png, result, sketch
from workers import options as worker_options
from workers.loading.cpu_paths import CpuPath
from workers.loading.device import Device
from workers.loading.pipelines import PipelineCache
from workers.options.step_cache import hooked
from workers.running.video import mp4_comment

CASES = [  # model, pipeline, params beyond the plain ones, the step cache (one that skips work on random weights)
    ("builtin:tiny-flux2", "txt2img", {"width": 64, "height": 64},
     {"method": "TaylorSeerCache", "cache_interval": 2, "disable_cache_before_step": 1}),
    ("builtin:tiny-flux2-dev", "txt2img", {"width": 64, "height": 64},
     {"method": "TaylorSeerCache", "cache_interval": 2, "disable_cache_before_step": 1}),
    ("builtin:tiny-qwen-image", "txt2img", {"width": 64, "height": 64}, {"method": "FirstBlockCache", "threshold": 1.0}),
    ("builtin:tiny-wan", "txt2video", {"width": 64, "height": 48, "frames": 5},
     {"method": "TaylorSeerCache", "cache_interval": 2, "disable_cache_before_step": 1}),
    ("builtin:tiny-wan-i2v", "img2video", {"width": 64, "height": 48, "frames": 5},
     {"method": "FirstBlockCache", "threshold": 1.0}),
    ("builtin:tiny-ltx", "txt2video", {"width": 64, "height": 64, "frames": 9},
     {"method": "FirstBlockCache", "threshold": 1.0}),
    ("builtin:tiny-ltx", "txt2video", {"width": 64, "height": 64, "frames": 9},
     {"method": "PyramidAttentionBroadcast", "spatial_attention_block_skip_range": 2}),
]
STEPS = 6


@pytest.fixture(scope="module")
def client(stack_factory) -> Client:
    st = one_worker(stack_factory, "stepcache-families", "w-cache-families")
    return Client(st.env["SDQ_SERVER"])


def _job(client: Client, model: str, pipeline: str, params: dict) -> dict:
    if pipeline == "img2video":
        params = {**params, "init_image": client.upload(png(sketch((params["width"], params["height"]), seed=5)),
                                                        "first.png")["key"]}
    return run(client, {"model": model, "pipeline": pipeline, "prompts": ["a lighthouse at dusk"],
                        "params": {"steps": STEPS, "seed": 7, "cache": False, **params}}, timeout=300)["items"][0]


@pytest.mark.parametrize("model, pipeline, size, value", CASES, ids=[f"{c[0][13:]}-{c[3]['method']}" for c in CASES])
def test_a_cached_job_runs_is_recorded_and_leaves_the_warm_transformer_plain(client, store, model, pipeline, size,
                                                                              value):
    plain = pixels(result(store, _job(client, model, pipeline, size)))  # a clip's poster: its first frame, lossless
    item = _job(client, model, pipeline, {**size, "step_cache": value})
    cached = result(store, item)
    assert np.abs(pixels(cached) - plain).max() > 0, "the cache changed nothing: the test could not fail"
    assert item["params"]["step_cache"] == checked(value, BUILTIN_FAMILIES[model])  # every setting filled in
    text = mp4_comment(store.get(item["video_key"])) if pipeline.endswith("video") else cached.info["parameters"]
    assert parse_infotext(text)["Step cache"].startswith(value["method"] + " "), text
    again = pixels(result(store, _job(client, model, pipeline, size)))
    assert np.array_equal(again, plain)


def test_z_image_is_refused_naming_the_field(client):
    resp = client.session.post(f"{client.server}/v1/jobs", json={
        "model": "builtin:tiny-z-image", "prompts": ["a"], "params": {"steps": 2, "step_cache": True}})
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert (err["field"], err["code"]) == ("params.step_cache", "unsupported_step_cache")


@pytest.fixture(scope="module")
def cache(models_dir) -> PipelineCache:
    return PipelineCache(models_dir, Device("cpu", "fp32", "cpu", CpuPath()))


def test_the_worker_refuses_a_method_the_family_does_not_take(cache):
    """FirstBlockCache raises inside diffusers on Flux.2's transformer: the worker names the field before any hook."""
    pipe, entry = cache.get("builtin:tiny-flux2", "txt2img")
    params = {"step_cache": checked({"method": "FirstBlockCache"}, None)}
    with pytest.raises(ModelError, match=r"params\.step_cache\.method.*TaylorSeerCache"):
        worker_options.apply(cache, pipe, entry, params)
    assert hooked(pipe.transformer) == []


def test_wans_taylorseer_hooks_its_blocks_attention(cache):
    pipe, entry = cache.get("builtin:tiny-wan", "txt2video")
    params = {"step_cache": checked({"method": "TaylorSeerCache"}, "wan")}
    worker_options.apply(cache, pipe, entry, params)
    try:
        names = [n for n, m in pipe.transformer.named_modules() if getattr(m, "_diffusers_hook", None) is not None
                 and m._diffusers_hook.hooks]
        assert names and all(n.startswith("blocks.") and n.split(".")[-1] in ("attn1", "attn2") for n in names), names
    finally:
        worker_options.undo(cache, pipe, entry, params)
    assert hooked(pipe.transformer) == []


def with_cache(cache: PipelineCache, pipe, entry, params: dict, make, seen: list) -> np.ndarray:
    """`make(params)` with the step cache of `params` on for the call, as a chunk applies it, and off after it
    (`seen`, what the call's steps saw, is emptied first)."""
    worker_options.apply(cache, pipe, entry, params)
    seen.clear()
    try:
        return make(params)
    finally:
        worker_options.undo(cache, pipe, entry, params)


@pytest.mark.parametrize("method", ["TaylorSeerCache", "FasterCache", "PyramidAttentionBroadcast"])
def test_flux2_devs_pipeline_gets_a_cache_context_from_the_hook(cache, method):
    """Flux2Pipeline (Flux.2 dev, `builtin:tiny-flux2-dev`) opens no cache context: through the hook each method
    runs with its hooks on, changes the image, and leaves the transformer making the plain image again."""
    import torch

    torch.set_num_threads(1)
    pipe, entry = cache.get("builtin:tiny-flux2-dev", "txt2img")
    seen: list[list[str]] = []

    def image(params: dict) -> np.ndarray:
        worker_options.steppers(worker_options.StepContext("job", [0], pipe, params, STEPS))  # before the call
        out = pipe(prompt="a red kite", width=64, height=64, num_inference_steps=STEPS, guidance_scale=3.5,
                   generator=torch.Generator().manual_seed(7), output_type="np",
                   callback_on_step_end=lambda p, i, t, kw: seen.append(hooked(p.transformer)) or kw)
        return out.images[0]

    plain = image({})
    params = {"step_cache": checked({"method": method, "cache_interval": 2, "disable_cache_before_step": 1}
                                    if method == "TaylorSeerCache" else {"method": method}, "flux2")}
    cached = with_cache(cache, pipe, entry, params, image, seen)
    assert seen and all(seen), "no cache hook was on during the call"
    assert np.abs(cached - plain).max() > 0
    assert hooked(pipe.transformer) == [] and np.array_equal(image({}), plain)


def test_wan22s_second_expert_is_hooked_and_unhooked_too(cache):
    """A Wan 2.2-shaped pipeline (tiny-wan with a copy of its transformer as `transformer_2`, the low-noise expert
    from half-way): both experts run hooked, and neither keeps a hook after the chunk."""
    import copy

    import torch
    from diffusers import WanPipeline

    torch.set_num_threads(1)
    wan, entry = cache.get("builtin:tiny-wan", "txt2video")
    pipe = WanPipeline(tokenizer=wan.tokenizer, text_encoder=wan.text_encoder, vae=wan.vae, scheduler=wan.scheduler,
                       transformer=wan.transformer, transformer_2=copy.deepcopy(wan.transformer), boundary_ratio=0.5)
    pipe.set_progress_bar_config(disable=True)
    seen: list[tuple[bool, bool]] = []

    def clip(params: dict) -> np.ndarray:
        worker_options.steppers(worker_options.StepContext("job", [0], pipe, params, 4))
        out = pipe(prompt="a lighthouse", num_frames=5, width=64, height=48, num_inference_steps=4,
                   generator=torch.Generator().manual_seed(7), output_type="np",
                   callback_on_step_end=lambda p, i, t, kw: seen.append(
                       (bool(hooked(p.transformer)), bool(hooked(p.transformer_2)))) or kw)
        return out.frames[0]

    plain = clip({})
    params = {"step_cache": checked({"method": "FirstBlockCache", "threshold": 1.0}, "wan")}
    cached = with_cache(cache, pipe, entry, params, clip, seen)
    assert seen and all(a and b for a, b in seen)
    assert np.abs(cached - plain).max() > 0
    assert hooked(pipe.transformer) == hooked(pipe.transformer_2) == [] and np.array_equal(clip({}), plain)
