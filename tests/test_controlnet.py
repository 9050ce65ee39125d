"""ControlNet and the hires fix through the queue on a real worker (builtin:tiny-sd with
builtin:tiny-controlnet), compared with direct diffusers calls; their checks at submit."""
from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.test_pipelines import close, pixels, result, run_job, sketch, upload

STEPS = 3
SIZE = {"width": 64, "height": 64}


@lru_cache(maxsize=None)
def _pipe(models_dir: Path, cls: str, controlnet: bool):
    import diffusers
    import torch

    from sdq.sources import builtin_path

    base = diffusers.DiffusionPipeline.from_pretrained(builtin_path(models_dir, "tiny-sd"), dtype=torch.float32)
    extra = {"controlnet": diffusers.ControlNetModel.from_pretrained(
        builtin_path(models_dir, "tiny-controlnet"), dtype=torch.float32)} if controlnet else {}
    pipe = getattr(diffusers, cls).from_pipe(base, **extra) if type(base).__name__ != cls else base
    pipe.set_progress_bar_config(disable=True)
    return pipe


def direct(models_dir: Path, cls: str, seed: int, controlnet: bool = True, **kw) -> Image.Image:
    """One image made in-process with plain diffusers (one thread, like the worker)."""
    import diffusers
    import torch

    torch.set_num_threads(1)
    pipe = _pipe(models_dir, cls, controlnet)
    pipe.scheduler = diffusers.PNDMScheduler.from_config(pipe.scheduler.config)
    kw.setdefault("num_inference_steps", STEPS)
    return pipe("a lighthouse", negative_prompt="", guidance_scale=7.5,
                generator=torch.Generator("cpu").manual_seed(seed), **kw).images[0]


@pytest.fixture(scope="module")
def controls(client) -> dict[str, str]:
    return {"a": upload(client, sketch((64, 64), seed=41)), "b": upload(client, sketch((64, 64), seed=42)),
            "small": upload(client, sketch((32, 32), seed=43)), "init": upload(client, sketch((64, 64), seed=44))}


def _job(control: str | None, seed: int = 9, pipeline: str = "txt2img", **params) -> dict:
    extra = {"controlnet": {"image": control, "scale": 1.0}} if control else {}
    return {"prompts": ["a lighthouse"], "pipeline": pipeline,
            "params": {**SIZE, "steps": STEPS, "seed": seed, **extra, **params}}


def test_queued_controlnet_image_equals_a_direct_diffusers_call(client, store, models_dir, controls):
    doc = run_job(client, _job(controls["a"]))
    got = pixels(result(store, doc["items"][0]))
    want = pixels(direct(models_dir, "StableDiffusionControlNetPipeline", 9, image=sketch((64, 64), seed=41),
                         controlnet_conditioning_scale=1.0, **SIZE))
    assert close(got, want), np.abs(got - want).max()


def test_the_control_image_changes_the_image(client, store, controls):
    """Without, with one control image, with another: three images (the second ControlNet job is not
    answered from the result cache of the first)."""
    plain = pixels(result(store, run_job(client, _job(None, seed=13))["items"][0]))
    with_a = pixels(result(store, run_job(client, _job(controls["a"], seed=13))["items"][0]))
    doc = run_job(client, _job(controls["b"], seed=13))
    assert not doc["items"][0].get("cached")
    with_b = pixels(result(store, doc["items"][0]))
    assert np.abs(plain - with_a).mean() > 2.0
    assert np.abs(with_a - with_b).mean() > 0.3  # measured ~1 on the tiny ControlNet at 3 steps


def test_the_same_controlnet_job_again_is_answered_from_the_result_cache(client, store, controls):
    """The ControlNet's weights digest is known (a built-in ControlNet folder has no model_index.json)."""
    first = run_job(client, _job(controls["a"], seed=57, hires={"scale": 1.5}))["items"][0]
    again = run_job(client, _job(controls["a"], seed=57, hires={"scale": 1.5}))["items"][0]
    assert again.get("cached") is True and not first.get("cached")
    assert close(pixels(result(store, again)), pixels(result(store, first)))


def test_controlnet_img2img_equals_a_direct_diffusers_call(client, store, models_dir, controls):
    doc = run_job(client, _job(controls["a"], seed=5, pipeline="img2img", init_image=controls["init"]))
    got = pixels(result(store, doc["items"][0]))
    want = pixels(direct(models_dir, "StableDiffusionControlNetImg2ImgPipeline", 5, image=sketch((64, 64), seed=44),
                         control_image=sketch((64, 64), seed=41), strength=0.8, controlnet_conditioning_scale=1.0))
    assert close(got, want), np.abs(got - want).max()


def test_controlnet_inpaint_equals_a_direct_diffusers_call(client, store, models_dir, controls):
    from tests.test_inpaint import mask

    key = upload(client, mask((64, 64), (0, 0, 31, 63)))
    doc = run_job(client, _job(controls["a"], seed=6, pipeline="inpaint", init_image=controls["init"], mask_image=key))
    got = pixels(result(store, doc["items"][0]))
    want = pixels(direct(models_dir, "StableDiffusionControlNetInpaintPipeline", 6, image=sketch((64, 64), seed=44),
                         mask_image=mask((64, 64), (0, 0, 31, 63)), control_image=sketch((64, 64), seed=41),
                         strength=0.8, controlnet_conditioning_scale=1.0, **SIZE))
    assert close(got, want), np.abs(got - want).max()


@pytest.mark.parametrize("task, cls", [("txt2img", "StableDiffusionXLControlNetPipeline"),
                                        ("img2img", "StableDiffusionXLControlNetImg2ImgPipeline")])
def test_sdxl_controlnet_equals_a_direct_diffusers_call(client, store, models_dir, controls, task, cls):
    """SDXL takes its own built-in ControlNet by default (size/crop conditioning included)."""
    import diffusers
    import torch

    from sdq.sources import builtin_path

    params = {**SIZE, "steps": STEPS, "seed": 8, "controlnet": {"image": controls["a"]}}
    kw = {"image": sketch((64, 64), seed=41)}
    if task == "img2img":
        params.update(init_image=controls["init"], strength=0.7)
        kw = {"image": sketch((64, 64), seed=44), "control_image": sketch((64, 64), seed=41), "strength": 0.7}
    doc = run_job(client, {"model": "builtin:tiny-sdxl", "pipeline": task, "prompts": ["a lighthouse"],
                           "params": params})
    item = doc["items"][0]
    assert item["params"]["controlnet"]["model"] == "builtin:tiny-sdxl-controlnet"
    torch.set_num_threads(1)
    base = diffusers.DiffusionPipeline.from_pretrained(builtin_path(models_dir, "tiny-sdxl"), dtype=torch.float32)
    net = diffusers.ControlNetModel.from_pretrained(builtin_path(models_dir, "tiny-sdxl-controlnet"),
                                                    dtype=torch.float32)
    pipe = getattr(diffusers, cls).from_pipe(base, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    want = pipe("a lighthouse", num_inference_steps=STEPS, guidance_scale=5.0, controlnet_conditioning_scale=1.0,
                generator=torch.Generator("cpu").manual_seed(8), **SIZE, **kw).images[0]
    got = pixels(result(store, item))
    assert close(got, pixels(want)), np.abs(got - pixels(want)).max()


def test_a_controlnet_of_another_family_is_a_422(stack, controls):
    resp = requests.post(stack.env["SDQ_SERVER"] + "/v1/jobs", timeout=10, json={
        "model": "builtin:tiny-sdxl", "prompts": ["x"],
        "params": {"controlnet": {"image": controls["a"], "model": "builtin:tiny-controlnet"}}})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == "params.controlnet.model"


def _two_passes(models_dir: Path, seed: int, scale: float, strength: float, steps: int) -> np.ndarray:
    first = direct(models_dir, "StableDiffusionPipeline", seed, controlnet=False, **SIZE)
    big = first.resize((int(64 * scale), int(64 * scale)), Image.Resampling.LANCZOS)
    return pixels(direct(models_dir, "StableDiffusionImg2ImgPipeline", seed, controlnet=False, image=big,
                         strength=strength, num_inference_steps=steps))


def test_hires_fix_outputs_the_larger_size_and_equals_two_direct_passes(client, store, models_dir):
    doc = run_job(client, _job(None, seed=21, hires={"scale": 2, "strength": 0.6, "steps": 4}))
    item = doc["items"][0]
    img = result(store, item)
    assert img.size == (128, 128) and item["size"] == [128, 128]
    assert item["params"]["hires"] == {"scale": 2.0, "strength": 0.6, "steps": 4}
    assert close(pixels(img), _two_passes(models_dir, 21, 2.0, 0.6, 4))


@pytest.mark.parametrize("model", ["builtin:tiny-sdxl", "builtin:tiny-sd3"])
def test_hires_fix_on_the_other_families(client, store, model):
    """The second pass is the family's own img2img class (the table's), at the larger size."""
    body = {"model": model, "prompts": ["a lighthouse"], "params": {**SIZE, "steps": 2, "seed": 4}}
    plain = pixels(result(store, run_job(client, body)["items"][0]))
    doc = run_job(client, {**body, "params": {**body["params"], "hires": {"scale": 1.5, "strength": 0.5}}})
    img = result(store, doc["items"][0])
    assert img.size == (96, 96) and doc["items"][0]["size"] == [96, 96]
    first = pixels(Image.fromarray(plain.astype("uint8")).resize((96, 96), Image.Resampling.LANCZOS))
    assert np.abs(pixels(img) - first).mean() > 0.5  # the second pass changed the enlarged first pass


def _inspect(tmp_path: Path, img: Image.Image) -> dict:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", img.info["parameters"])
    img.save(tmp_path / "made.png", pnginfo=info)
    out = subprocess.run([sys.executable, "-m", "cli", "inspect", "--json", str(tmp_path / "made.png")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_inspect_reproduces_a_controlnet_hires_image(client, store, controls, tmp_path):
    doc = run_job(client, _job(controls["b"], seed=33, hires={"scale": 1.5, "strength": 0.5}))
    made = result(store, doc["items"][0])
    assert made.size == (96, 96)
    shown = _inspect(tmp_path, made)
    parsed = shown["parsed"]
    assert (parsed["Size"], parsed["Hires upscale"], parsed["Hires steps"], parsed["Hires upscaler"]) == \
        ("64x64", "1.5", str(STEPS), "Lanczos")
    assert "builtin:tiny-controlnet" in parsed["ControlNet 0"] and controls["b"] in parsed["ControlNet 0"]
    body = shown["resubmit"]
    assert body["params"]["controlnet"] == {"model": "builtin:tiny-controlnet", "image": controls["b"], "scale": 1.0}
    again = run_job(client, {**body, "params": {**body["params"], "cache": False}})
    assert close(pixels(result(store, again["items"][0])), pixels(made))


@pytest.mark.parametrize("body, field, code", [
    ({"model": "builtin:tiny-upscaler", "pipeline": "upscale", "params": {"init_image": "init",
      "controlnet": {"image": "a"}}}, "params.controlnet", "unsupported_controlnet"),
    ({"model": "builtin:tiny-depth", "pipeline": "depth2img", "params": {"init_image": "init",
      "controlnet": {"image": "a"}}}, "params.controlnet", "unsupported_controlnet"),
    ({"model": "builtin:tiny-sd3", "params": {"controlnet": {"image": "a"}}}, "params.controlnet",
     "unsupported_controlnet"),
    ({"params": {"controlnet": {"image": "a", "model": "lllyasviel/sd-controlnet-canny"}}},
     "params.controlnet.model", "unknown_model"),
    ({"params": {"controlnet": {"image": "uploads/0123abcd.png"}}}, "params.controlnet.image", None),
    ({"params": {"controlnet": {"image": "a", "scale": 3}}}, "params.controlnet.scale", None),
    ({"params": {"controlnet": {"scale": 1}}}, "params.controlnet.image", None),
    ({"pipeline": "img2img", "params": {"init_image": "init", "controlnet": {"image": "small"}}},
     "params.controlnet.image", "size_mismatch"),
    ({"pipeline": "img2img", "params": {"init_image": "init", "hires": {"scale": 2}}}, "params.hires",
     "unexpected_hires"),
    ({"params": {"hires": {"scale": 5}}}, "params.hires.scale", None),
    ({"params": {"hires": {"sharpness": 5}}}, "params.hires.sharpness", None),
])
def test_bad_controlnet_or_hires_is_a_422_naming_the_field(stack, controls, body, field, code):
    params = {k: controls.get(v, v) if isinstance(v, str) else v for k, v in body.get("params", {}).items()}
    if "controlnet" in params:
        params["controlnet"] = {k: controls.get(v, v) if isinstance(v, str) else v
                                for k, v in params["controlnet"].items()}
    resp = requests.post(stack.env["SDQ_SERVER"] + "/v1/jobs", timeout=10,
                         json={"prompts": ["x"], **body, "params": params})
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["field"] == field and err["code"] == (code or err["code"]), err


def test_the_control_image_gives_the_size_when_none_is_asked(client, store, controls):
    doc = run_job(client, {"prompts": ["a lighthouse"], "params": {"steps": 2, "seed": 3,
                                                                   "controlnet": {"image": controls["small"]}}})
    assert result(store, doc["items"][0]).size == (32, 32)


def test_cli_submits_a_controlnet_hires_job(stack, client, store, tmp_path):
    from tests.test_cli import sdq
    from tests.test_pipelines import png

    (tmp_path / "control.png").write_bytes(png(sketch((64, 64), seed=41)))
    (tmp_path / "p.txt").write_text("a lighthouse\n")
    out = sdq("submit", str(tmp_path / "p.txt"), "--steps", "2", "--width", "64", "--height", "64", "--seed", "3",
              "--controlnet-image", str(tmp_path / "control.png"), "--controlnet-scale", "0.5",
              "--hires-scale", "1.5", "--wait", "--json", server=stack.env["SDQ_SERVER"])
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["state"] == "succeeded"
    item = client.job(doc["id"])["items"][0]
    assert item["params"]["controlnet"]["scale"] == 0.5 and item["params"]["hires"]["scale"] == 1.5
    assert result(store, item).size == (96, 96)
