"""LoRA per job through the queue on a real worker (builtin:tiny-sd with the built-in tiny LoRAs):
the adapter changes the image and is switched off again for the next job on the same warm worker,
the queued image equals a direct diffusers call (`load_lora_weights` + `set_adapters`), Kohya and
diffusers layouts agree, adapters pushed to the bucket load by `store:NAME`, and the PNG's infotext
is read by sd-parsers and by `sdq inspect`, which makes the image again."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import requests

from cli.client import Client
from sdq.infotext import parse_infotext
from tests.conftest import wait_job
from tests.test_pipelines import close, pixels, result, run_job
from tests.unit.test_loras import write_safetensors

STEPS = 3
PROMPT = "a lighthouse at dusk"
SIZE = {"width": 64, "height": 64}


def body(seed: int, loras: list[dict] | None = None, **params) -> dict:
    """A txt2img job on builtin:tiny-sd that is never answered from the result cache."""
    p = {"steps": STEPS, "seed": seed, "cache": False, **SIZE, **params}
    if loras is not None:
        p["loras"] = loras
    return {"prompts": [PROMPT], "params": p}


def make(client, store, seed: int, loras: list[dict] | None = None) -> tuple[np.ndarray, dict]:
    doc = run_job(client, body(seed, loras))
    item = doc["items"][0]
    return pixels(result(store, item)), item


@lru_cache(maxsize=None)
def _direct_pipe(models_dir: Path, adapter: str):
    import diffusers
    import torch

    from sdq.sources import builtin_path

    pipe = diffusers.DiffusionPipeline.from_pretrained(builtin_path(models_dir, "tiny-sd"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(builtin_path(models_dir, adapter)), weight_name="adapter.safetensors",
                           adapter_name="direct")
    return pipe


def direct_with_lora(models_dir: Path, adapter: str, scale: float, seed: int) -> np.ndarray:
    """The same image made in-process with plain diffusers and its peft LoRA API (one thread)."""
    import diffusers
    import torch

    torch.set_num_threads(1)
    pipe = _direct_pipe(models_dir, adapter)
    pipe.set_adapters(["direct"], adapter_weights=[scale])
    pipe.scheduler = diffusers.PNDMScheduler.from_config(pipe.scheduler.config)
    out = pipe(PROMPT, negative_prompt="", num_inference_steps=STEPS, guidance_scale=7.5,
               generator=torch.Generator("cpu").manual_seed(seed), **SIZE)
    return pixels(out.images[0])


@pytest.mark.parametrize("name", ["tiny-lora", "tiny-lora-kohya", "tiny-lora-sdxl"])
def test_builtin_adapters_are_the_same_bytes_every_time(models_dir, tmp_path, name):
    from workers.builtins.registry import BUILDERS, ensure_builtin

    BUILDERS[name](tmp_path / name)
    assert (tmp_path / name / "adapter.safetensors").read_bytes() == \
        (ensure_builtin(models_dir, name) / "adapter.safetensors").read_bytes()


def test_queued_lora_image_equals_a_direct_diffusers_call(client, store, models_dir):
    got, item = make(client, store, 31, [{"name": "builtin:tiny-lora", "scale": 0.8}])
    want = direct_with_lora(models_dir, "tiny-lora", 0.8, 31)
    assert close(got, want), np.abs(got - want).max()


def test_a_lora_changes_the_image_and_the_next_job_without_it_is_back_to_the_base(client, store):
    plain, first = make(client, store, 41)
    styled, second = make(client, store, 41, [{"name": "builtin:tiny-lora", "scale": 1.0}])
    again, third = make(client, store, 41)
    assert first["worker"] == second["worker"] == third["worker"]  # one warm worker, the adapter still loaded
    assert np.abs(styled - plain).mean() > 1.0
    assert np.array_equal(again, plain)  # switched off: the base weights alone, bit for bit
    record = next(w for w in client.workers() if w["name"] == third["worker"])
    assert "builtin:tiny-lora" in record["loaded_adapters"]["builtin:tiny-sd"]  # kept warm, and said so


def test_two_jobs_with_different_adapters_on_one_worker(client, store):
    diffusers_layout, a = make(client, store, 43, [{"name": "builtin:tiny-lora", "scale": 1.0}])
    kohya_layout, b = make(client, store, 43, [{"name": "builtin:tiny-lora-kohya", "scale": 1.0}])
    half, c = make(client, store, 43, [{"name": "builtin:tiny-lora", "scale": 0.5}])
    both_halves, d = make(client, store, 43, [{"name": "builtin:tiny-lora", "scale": 0.5},
                                              {"name": "builtin:tiny-lora-kohya", "scale": 0.5}])
    assert a["worker"] == b["worker"] == c["worker"] == d["worker"]
    # The Kohya file holds the same update (alpha = rank) in A1111 naming: the same image.
    assert close(kohya_layout, diffusers_layout), np.abs(kohya_layout - diffusers_layout).max()
    assert np.abs(half - diffusers_layout).mean() > 0.5  # the scale reaches the adapter
    # Two adapters at 0.5 each add up to one at 1.0 (a LoRA update is linear in its scale).
    assert close(both_halves, diffusers_layout), np.abs(both_halves - diffusers_layout).max()


def test_an_sdxl_lora_on_an_sdxl_model(client, store):
    def sdxl(loras: list[dict] | None = None) -> tuple[np.ndarray, dict]:
        job = {**body(67, loras), "model": "builtin:tiny-sdxl"}
        item = run_job(client, job)["items"][0]
        return pixels(result(store, item)), item

    plain, a = sdxl()
    styled, b = sdxl([{"name": "builtin:tiny-lora-sdxl", "scale": 1.0}])
    again, c = sdxl()
    assert a["worker"] == b["worker"] == c["worker"]
    assert np.abs(styled - plain).mean() > 1.0 and np.array_equal(again, plain)


def test_sd_parsers_reads_the_lora_tags_and_inspect_makes_the_image_again(client, store, tmp_path):
    from PIL.PngImagePlugin import PngInfo
    from sd_parsers import ParserManager

    loras = [{"name": "builtin:tiny-lora", "scale": 0.75}]
    first = result(store, run_job(client, body(47, loras))["items"][0])
    text = first.info["parameters"]
    assert text.splitlines()[0] == f"{PROMPT} <lora:tiny-lora:0.75>"
    assert parse_infotext(text)["Lora hashes"].startswith("tiny-lora: ")
    path = tmp_path / "lora.png"
    meta = PngInfo()
    meta.add_text("parameters", text)
    first.save(path, pnginfo=meta)
    # A third-party reader: sd-parsers finds the A1111 prompt with its LoRA tag.
    parsed = ParserManager().parse(str(path))
    assert parsed is not None and "<lora:tiny-lora:0.75>" in parsed.full_prompt
    # `sdq inspect` gives a submit body that names the adapter by its id again.
    out = subprocess.run([sys.executable, "-m", "cli", "inspect", "--json", str(path)], capture_output=True,
                         text=True, timeout=60, env={**os.environ})
    assert out.returncode == 0, out.stderr
    again = json.loads(out.stdout)["resubmit"]
    assert again["prompts"] == [PROMPT] and again["params"]["loras"] == loras
    again["params"]["cache"] = False
    second = result(store, run_job(client, again)["items"][0])
    assert np.array_equal(pixels(first), pixels(second))


def test_the_result_cache_keeps_lora_and_plain_images_apart(client, store):
    cached_body = {**body(53), "params": {**body(53)["params"], "cache": True}}
    plain = run_job(client, cached_body)["items"][0]
    with_lora = {**cached_body, "params": {**cached_body["params"], "loras": [{"name": "builtin:tiny-lora"}]}}
    first = run_job(client, with_lora)
    second = run_job(client, with_lora)["items"][0]
    assert not first["items"][0].get("cached")  # not answered with the plain image
    assert second.get("cached") and second["cached_from"]["job"] == first["id"]  # cached under its own key
    assert not np.array_equal(pixels(result(store, plain)), pixels(result(store, second)))


@pytest.mark.parametrize("loras, model, field, code", [
    ([{"name": "builtin:nope"}], None, "params.loras[0].name", "unknown_lora"),
    ([{"name": "builtin:tiny-lora", "scale": 99}], None, "params.loras[0].scale", "invalid"),
    ([{"name": "builtin:tiny-lora", "weight": 1}], None, "params.loras[0].weight", "invalid"),
    ([{"name": "builtin:tiny-lora"}], "builtin:tiny-sdxl", "params.loras[0].name", "wrong_family"),
    ([{"name": "builtin:tiny-lora-sdxl"}], None, "params.loras[0].name", "wrong_family"),
])
def test_bad_loras_answer_422_naming_the_field(stack, loras, model, field, code):
    job = body(1, loras)
    if model:
        job = {**job, "model": model, "params": {k: v for k, v in job["params"].items() if k not in SIZE}}
    resp = requests.post(stack.env["SDQ_SERVER"] + "/v1/jobs", json=job, timeout=10)
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["field"] == field and err["code"] == code


def test_pushed_adapters_load_by_store_name_and_another_family_is_refused(stack_factory, store, models_dir,
                                                                          tmp_path):
    from workers.builtins.registry import ensure_builtin

    kohya = ensure_builtin(models_dir, "tiny-lora-kohya") / "adapter.safetensors"
    st = stack_factory("loras", env={"SDQ_MODELS": f"store:ink-kohya,store:xl-lora,{tmp_path / 'xl.safetensors'}",
                                     "SDQ_MODELS_DIR": str(tmp_path / "cache")})
    env = {**os.environ, **st.env}
    out = subprocess.run([sys.executable, "-m", "cli", "models", "push", str(kohya), "--as", "ink-kohya"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "sd LoRA adapter" in out.stderr
    write_safetensors(tmp_path / "xl.safetensors", ["lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha"])
    out = subprocess.run([sys.executable, "-m", "cli", "models", "push", str(tmp_path / "xl.safetensors"),
                          "--as", "xl-lora"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "sdxl LoRA adapter" in out.stderr, out.stderr
    api = Client(st.env["SDQ_SERVER"])
    # An SDXL adapter on an SD model: refused at submit, naming the field.
    resp = requests.post(st.env["SDQ_SERVER"] + "/v1/jobs",
                         json=body(1, [{"name": str(tmp_path / "xl.safetensors")}]), timeout=10)
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "params.loras[0].name"
    assert "sdxl" in resp.json()["error"]["message"]
    # The pushed Kohya file, pulled by a worker with an empty cache, makes the built-in's image.
    st.worker("w-loras", "--device", "cpu", "--threads", "1")
    doc = wait_job(api, api.submit(body(59, [{"name": "store:ink-kohya", "scale": 1.0}]))["id"], timeout=240)
    assert doc["state"] == "succeeded", [it.get("error") for it in doc["items"]]
    assert (tmp_path / "cache" / "store" / "ink-kohya" / ".sdq-manifest.json").is_file()
    pushed = pixels(result(store, doc["items"][0]))
    builtin = pixels(result(store, run_job(api, body(59, [{"name": "builtin:tiny-lora", "scale": 1.0}]))["items"][0]))
    assert close(pushed, builtin), np.abs(pushed - builtin).max()
    # A pushed adapter's family is only known once a worker has it: the item fails naming the field.
    doc = wait_job(api, api.submit(body(61, [{"name": "store:xl-lora"}]))["id"], timeout=240)
    error = doc["items"][0].get("error") or ""
    assert doc["state"] == "failed" and "params.loras" in error and "sdxl family" in error, error
