"""Inpainting through the queue on a real worker (builtin:tiny-sd, a 4-channel UNet), compared with a
direct diffusers `StableDiffusionInpaintPipeline` call; masks checked at submit."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from sdq.infotext import parse_infotext, submit_body_from_infotext
from tests.test_pipelines import close, pixels, result, run_job, sketch, upload

STEPS = 3


def mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A single-channel mask: white (repainted) inside `box`, black (kept) elsewhere."""
    img = Image.new("L", size, 0)
    ImageDraw.Draw(img).rectangle(box, fill=255)
    return img


@lru_cache(maxsize=None)
def _inpaint_pipe(models_dir: Path):
    import diffusers
    import torch

    from sdq.sources import builtin_path

    base = diffusers.DiffusionPipeline.from_pretrained(builtin_path(models_dir, "tiny-sd"), dtype=torch.float32)
    pipe = diffusers.StableDiffusionInpaintPipeline.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def direct_inpaint(models_dir: Path, prompt: str, seed: int, image: Image.Image, mask_image: Image.Image,
                   strength: float = 0.8) -> np.ndarray:
    """The same image made in-process with plain diffusers (one thread, like the worker)."""
    import diffusers
    import torch

    torch.set_num_threads(1)
    pipe = _inpaint_pipe(models_dir)
    pipe.scheduler = diffusers.PNDMScheduler.from_config(pipe.scheduler.config)
    out = pipe(prompt, image=image, mask_image=mask_image, strength=strength, negative_prompt="",
               width=image.width, height=image.height,
               num_inference_steps=STEPS, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(seed))
    return pixels(out.images[0])


@pytest.fixture(scope="module")
def uploads(client) -> dict[str, str]:
    return {"init": upload(client, sketch((64, 64), seed=3)),
            "left": upload(client, mask((64, 64), (0, 0, 31, 63))),
            "right": upload(client, mask((64, 64), (32, 0, 63, 63))),
            "small": upload(client, mask((32, 32), (0, 0, 15, 31)))}


def _job(uploads: dict[str, str], which: str, seed: int = 17, **params) -> dict:
    return {"prompts": ["a stone bridge"], "pipeline": "inpaint",
            "params": {"steps": STEPS, "seed": seed, "init_image": uploads["init"], "mask_image": uploads[which],
                       **params}}


def test_queued_inpaint_equals_a_direct_diffusers_call(client, store, models_dir, uploads):
    doc = run_job(client, _job(uploads, "left"))
    img = result(store, doc["items"][0])
    assert img.size == (64, 64)  # the init image's size, not the model's default sample size (256 here)
    got = pixels(img)
    want = direct_inpaint(models_dir, "a stone bridge", 17, sketch((64, 64), seed=3), mask((64, 64), (0, 0, 31, 63)))
    assert close(got, want), np.abs(got - want).max()


def test_another_mask_makes_another_image(client, store, uploads):
    """Also shows the mask is in the result-cache key: the second job is not answered from the first."""
    left = pixels(result(store, run_job(client, _job(uploads, "left", seed=23))["items"][0]))
    doc = run_job(client, _job(uploads, "right", seed=23))
    assert not doc["items"][0].get("cached")
    right = pixels(result(store, doc["items"][0]))
    assert np.abs(left - right).mean() > 1.0


def test_a_mask_per_item(client, store, uploads):
    doc = run_job(client, {"pipeline": "inpaint", "params": {"steps": STEPS, "init_image": uploads["init"],
                                                             "mask_image": uploads["left"]},
                           "items": [{"prompt": "a stone bridge", "seed": 5},
                                     {"prompt": "a stone bridge", "seed": 5, "mask_image": uploads["right"]}]})
    first, second = doc["items"]
    assert first["images"] == {"mask_image": uploads["left"]} and second["images"] == {"mask_image": uploads["right"]}
    assert np.abs(pixels(result(store, first)) - pixels(result(store, second))).mean() > 1.0


def test_the_infotext_names_the_mask_and_makes_the_job_again(client, store, uploads):
    doc = run_job(client, _job(uploads, "left", seed=31))
    info = parse_infotext(result(store, doc["items"][0]).info["parameters"])
    assert info["Pipeline"] == "inpaint" and info["Mask image"] == uploads["left"]
    body = submit_body_from_infotext(info)
    assert body["params"]["mask_image"] == uploads["left"] and body["params"]["init_image"] == uploads["init"]
    again = run_job(client, {**body, "params": {**body["params"], "cache": False}})
    assert close(pixels(result(store, again["items"][0])), pixels(result(store, doc["items"][0])))


@pytest.mark.parametrize("change, field, code", [
    ({"mask_image": None}, "params.mask_image", "missing_mask_image"),
    ({"mask_image": "small"}, "params.mask_image", "size_mismatch"),
    ({"mask_image": "uploads/0123abcd.png"}, "params.mask_image", None),  # no such upload
    ({"init_image": None}, "params.init_image", "missing_init_image"),
])
def test_a_bad_mask_is_a_422_naming_the_field(stack, uploads, change, field, code):
    params = {"steps": STEPS, "init_image": uploads["init"], "mask_image": uploads["left"]}
    for key, value in change.items():
        params[key] = uploads.get(value, value) if value else None
    params = {k: v for k, v in params.items() if v is not None}
    resp = requests.post(stack.env["SDQ_SERVER"] + "/v1/jobs", timeout=10,
                         json={"prompts": ["x"], "pipeline": "inpaint", "params": params})
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["field"] == field and err["code"] == (code or err["code"]), err


def test_a_mask_on_a_pipeline_without_one_is_a_422(stack, uploads):
    resp = requests.post(stack.env["SDQ_SERVER"] + "/v1/jobs", timeout=10, json={
        "items": [{"prompt": "x", "mask_image": uploads["left"]}], "pipeline": "img2img",
        "params": {"init_image": uploads["init"]}})
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert (err["field"], err["code"]) == ("items[0].mask_image", "unexpected_mask_image")
    assert "inpaint" in err["message"]


def test_a_mismatched_mask_per_item_names_the_item(stack, uploads):
    resp = requests.post(stack.env["SDQ_SERVER"] + "/v1/jobs", timeout=10, json={
        "items": [{"prompt": "x"}, {"prompt": "y", "mask_image": uploads["small"]}], "pipeline": "inpaint",
        "params": {"init_image": uploads["init"], "mask_image": uploads["left"]}})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == "items[1].mask_image"
