"""The walking skeleton end to end: prompts in over HTTP, PNGs out of S3, on real services."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from sdq.infotext import parse_infotext
from tests.conftest import FAST, wait_job, wait_until

PROMPTS = ["a hamster painting with a brush", "A bird is sitting on a tree branch", "a red fox in snow"]


def _png(store, key: str) -> Image.Image:
    return Image.open(io.BytesIO(store.get(key)))


def direct_image(models_dir: Path, prompt: str, seed: int, steps: int, size: int, negative: str = "") -> np.ndarray:
    """The same image made in-process with plain diffusers (one thread, like the worker)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from sdq.sources import builtin_path

    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(builtin_path(models_dir, "tiny-sd"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    img = pipe(prompt, negative_prompt=negative, num_inference_steps=steps, height=size, width=size,
               guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    return np.asarray(img)


def test_three_prompts_become_three_pngs(client, store):
    resp = client.submit({"prompts": PROMPTS, "params": {**FAST, "width": 64, "height": 128, "seed": 100}})
    assert resp["items"] == 3 and resp["state"] == "queued"
    doc = wait_job(client, resp["id"])
    assert doc["state"] == "succeeded", doc
    assert doc["counts"]["succeeded"] == 3 and doc["progress"] == 1.0
    keys = store.keys(f"jobs/{resp['id']}/")
    assert [k for k in keys if k.endswith(".png")] == [f"jobs/{resp['id']}/{i:05d}.png" for i in range(3)]
    for item in doc["items"]:
        img = _png(store, item["key"])
        assert img.size == (64, 128)
        img.load()
        info = parse_infotext(img.info["parameters"])
        assert info["prompt"] == PROMPTS[item["index"]]
        assert int(info["Seed"]) == item["seed"] == 100 + item["index"]
        assert info["Size"] == "64x128" and info["Model"] == "builtin:tiny-sd"
        assert item["worker"] == "w-main" and item["device"] == "cpu" and item["dtype"] == "fp32"
        # the presigned URL serves the same bytes
        assert requests.get(item["url"], timeout=10).content == store.get(item["key"])
    # the state turns final first; the manifest follows a moment later (the finalize task)
    wait_until(lambda: client.job(resp["id"]).get("manifest"), "manifest written", 60)
    assert f"jobs/{resp['id']}/manifest.json" in store.keys(f"jobs/{resp['id']}/")


def test_queue_result_equals_direct_diffusers(client, store, models_dir):
    prompt, seed = "a lighthouse on a cliff", 1234
    resp = client.submit({"prompts": [prompt], "params": {**FAST, "seed": seed, "negative_prompt": "fog"}})
    doc = wait_job(client, resp["id"])
    got = np.asarray(_png(store, doc["items"][0]["key"]).convert("RGB"))
    want = direct_image(models_dir, prompt, seed, FAST["steps"], FAST["width"], negative="fog")
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    other = direct_image(models_dir, prompt, seed + 1, FAST["steps"], FAST["width"], negative="fog")
    assert np.abs(got.astype(int) - other.astype(int)).mean() > 5  # the comparison can fail


def test_same_seed_twice_gives_identical_images(client, store):
    body = {"prompts": PROMPTS[:2], "params": {**FAST, "seed": 7, "cache": False}}  # two runs, not a cache hit
    docs = [wait_job(client, client.submit(body)["id"]) for _ in range(2)]
    for a, b in zip(docs[0]["items"], docs[1]["items"]):
        assert a["seed"] == b["seed"]
        assert np.array_equal(np.asarray(_png(store, a["key"])), np.asarray(_png(store, b["key"])))


def test_job_without_seed_gets_a_recorded_random_seed(client):
    resp = client.submit({"prompts": ["x", "y"], "params": FAST})
    doc = wait_job(client, resp["id"])
    assert [it["seed"] for it in doc["items"]] == [resp["seed"], resp["seed"] + 1]
    assert doc["params"]["seed"] == resp["seed"]


def test_producer_imports_without_torch(tmp_path):
    """The producer extra alone: torch, diffusers and transformers are unimportable."""
    code = ("import sys\n"
            "for m in ('torch', 'diffusers', 'transformers', 'accelerate'): sys.modules[m] = None\n"
            "import producer.app, storage, cli.main\n"
            "app = producer.app.create_app()\n"
            "c = app.test_client()\n"
            "r = c.post('/v1/jobs', json={'prompts': []})\n"
            "assert r.status_code == 422, r.status_code\n"
            "assert not [m for m in sys.modules if m.startswith(('torch', 'diffusers'))and sys.modules[m]]\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "SDQ_REDIS_URL": "redis://127.0.0.1:1/0"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("body, field, status", [
    ({"prompts": []}, "prompts", 422),
    ({"prompts": ["ok", "  "]}, "prompts", 422),
    ({"prompts": ["a"], "model": "nope/unknown-model"}, "model", 422),
    ({"prompts": ["a"], "model": "../etc/passwd"}, "model", 422),
    ({"prompts": ["a"], "pipeline": "txt2vid"}, "pipeline", 422),
    ({"prompts": ["a"], "params": {"width": 100}}, "params.width", 422),
    ({"prompts": ["a"], "params": {"height": 4096}}, "params.height", 422),
    ({"prompts": ["a"], "params": {"width": 2048, "height": 2048}}, "params.width", 422),
    ({"prompts": ["a"], "params": {"steps": 0}}, "params.steps", 422),
    ({"prompts": ["a"], "params": {"steps": 10000}}, "params.steps", 422),
    ({"prompts": ["a"], "params": {"steps": "many"}}, "params.steps", 422),
    ({"prompts": ["a"], "params": {"scheduler": "warp"}}, "params.scheduler", 422),
    ({"prompts": ["a"], "items": [{"prompt": "b"}]}, "prompts", 422),
    ({"prompts": ["a"], "colour": "red"}, "colour", 422),
    (["a list"], "body", 400),
])
def test_bad_input_is_a_4xx_naming_the_field_and_enqueues_nothing(stack, body, field, status):
    import redis

    r = redis.Redis.from_url(stack.env["SDQ_REDIS_URL"])
    before = set(r.keys("sdq:job:*"))
    resp = requests.post(stack.env["SDQ_SERVER"] + "/v1/jobs", json=body, timeout=10)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["field"] == field and err["code"] and err["message"]
    bad_value = {"params.width": ("100", "2048"), "params.height": ("4096",), "params.steps": ("0", "10000", "many"),
                 "model": ("nope/unknown-model", "../etc/passwd"), "pipeline": ("txt2vid",),
                 "params.scheduler": ("warp",)}.get(field)
    if bad_value:
        assert any(v in err["message"] for v in bad_value), err["message"]
    assert set(r.keys("sdq:job:*")) == before


def test_body_that_is_not_json(stack):
    # text/plain, text/csv and x-ndjson are prompt files (tests/test_formats.py); a form is not.
    resp = requests.post(stack.env["SDQ_SERVER"] + "/v1/jobs", data="prompts=hello",
                         headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
    assert resp.status_code == 400
    assert resp.json()["error"]["field"] == "body"


def test_unknown_job_is_404(client):
    resp = requests.get(client.server + "/v1/jobs/0123456789abcdef", timeout=10)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
