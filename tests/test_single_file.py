"""Model sources behind the SDQ_MODELS allowlist: an original-layout single file, a .ckpt, a local
diffusers folder and Hugging Face repo ids from the local cache, on a private stack's real worker."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from cli.client import Client
from sdq.sources import builtin_path
from tests.conftest import FAST, wait_job
from tests.test_skeleton import direct_image

HUB_REPO = "sdq-test/tiny-sd-cached"
HUB_MISSING = "sdq-test/never-downloaded"
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def sources(tmp_path_factory, models_dir) -> dict[str, str]:
    """builtin:tiny-sd as: an LDM-layout .safetensors (+ its config folder), a .ckpt, a copied diffusers
    folder, and a repo in the worker's hub cache."""
    import torch

    from tests.support.ldm import to_ldm, write_single_file

    src = builtin_path(models_dir, "tiny-sd")
    d = tmp_path_factory.mktemp("sources")
    single = write_single_file(src, d / "tiny-ldm.safetensors")
    # the local config: the diffusers folder's configs and tokenizer, without any weights
    shutil.copytree(src, d / "tiny-ldm", ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    torch.save({"state_dict": to_ldm(src)}, d / "tiny-ldm.ckpt")
    folder = shutil.copytree(src, d / "tiny-folder")
    repo = models_dir / "hub" / ("models--" + HUB_REPO.replace("/", "--"))
    if not repo.exists():
        shutil.copytree(src, repo / "snapshots" / SNAPSHOT)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(SNAPSHOT)
    return {"single": str(single), "ckpt": str(d / "tiny-ldm.ckpt"), "folder": str(folder), "hub": HUB_REPO,
            "missing": HUB_MISSING}


@pytest.fixture(scope="module")
def private(stack_factory, sources):
    allow = ",".join(sources.values())
    st = stack_factory("sources", env={"SDQ_MODELS": allow})
    st.worker("w-sources", "--device", "cpu", "--threads", "1", "--low-memory")
    return st


@pytest.fixture(scope="module")
def pclient(private) -> Client:
    return Client(private.env["SDQ_SERVER"])


def _image(store, item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(store.get(item["key"]))).convert("RGB")).astype(int)


def test_ldm_file_has_the_original_layout(sources):
    from safetensors import safe_open

    with safe_open(sources["single"], "pt") as f:
        keys = set(f.keys())
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
                "model.diffusion_model.output_blocks.1.2.conv.weight", "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.up.3.block.0.conv1.weight", "first_stage_model.encoder.mid.attn_1.q.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"):
        assert key in keys, key


@pytest.mark.parametrize("source", ["single", "folder", "hub"])
def test_model_source_makes_the_same_image_as_the_builtin(pclient, store, models_dir, sources, source):
    prompt, seed = "a windmill at dusk", 4321
    resp = pclient.submit({"prompts": [prompt], "model": sources[source],
                           "params": {**FAST, "seed": seed, "negative_prompt": "rain"}})
    doc = wait_job(pclient, resp["id"], timeout=240)
    assert doc["state"] == "succeeded", doc["items"][0]["error"]
    got = _image(store, doc["items"][0])
    want = direct_image(models_dir, prompt, seed, FAST["steps"], FAST["width"], negative="rain")
    assert np.abs(got - want.astype(int)).max() <= 1
    info = Image.open(io.BytesIO(store.get(doc["items"][0]["key"]))).info["parameters"]
    assert f"Model: {sources[source]}" in info


def test_low_memory_on_cpu_is_a_logged_no_op(private, pclient, store, sources):
    """The private worker runs with --low-memory: it says so, and (above) still makes identical images."""
    log = (private.workdir / "worker-w-sources.log").read_text(errors="replace")
    assert "--low-memory has no effect on a CPU" in log


def test_single_file_serves_img2img_too(pclient, store, sources):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 60, 200)).save(buf, format="PNG")
    key = pclient.upload(buf.getvalue(), "flat.png")["key"]
    doc = wait_job(pclient, pclient.submit({"prompts": ["a violet wall"], "model": sources["single"],
                                            "pipeline": "img2img", "params": {"steps": 2, "init_image": key}})["id"])
    assert doc["state"] == "succeeded", doc["items"][0]["error"]
    assert _image(store, doc["items"][0]).shape == (64, 64, 3)


@pytest.mark.parametrize("source, words", [
    ("ckpt", "SDQ_ALLOW_CKPT=1"),
    ("missing", "HF_HUB_OFFLINE"),
])
def test_model_that_cannot_be_loaded_fails_its_items_with_the_reason(pclient, sources, source, words):
    doc = wait_job(pclient, pclient.submit({"prompts": ["x"], "model": sources[source], "params": FAST})["id"])
    assert doc["state"] == "failed"
    assert words in doc["items"][0]["error"], doc["items"][0]["error"]


@pytest.mark.parametrize("model", [
    "/etc/passwd.safetensors", "/tmp/some-folder", "~/models/x.ckpt", "../tiny-ldm.safetensors",
    "https://example.com/model.safetensors", "someone/other-repo",
])
def test_model_outside_the_allowlist_is_refused_at_submit(private, model):
    resp = requests.post(private.env["SDQ_SERVER"] + "/v1/jobs", json={"prompts": ["x"], "model": model}, timeout=10)
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["field"] == "model" and model in err["message"]


def test_path_with_dotdot_is_refused_even_when_it_resolves_into_the_allowlist(private, sources):
    sneaky = str(Path(sources["single"]).parent / ".." / Path(sources["single"]).parent.name / "tiny-ldm.safetensors")
    resp = requests.post(private.env["SDQ_SERVER"] + "/v1/jobs", json={"prompts": ["x"], "model": sneaky}, timeout=10)
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "model"
