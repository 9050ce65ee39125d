"""Every pipeline through the queue on a real worker, compared with a direct in-process diffusers call."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdq.infotext import parse_infotext, submit_body_from_infotext
from tests.conftest import wait_job

MODELS = {"txt2img": "builtin:tiny-sd", "img2img": "builtin:tiny-sd", "upscale": "builtin:tiny-upscaler",
          "depth2img": "builtin:tiny-depth"}
CLASSES = {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
           "upscale": "StableDiffusionUpscalePipeline", "depth2img": "StableDiffusionDepth2ImgPipeline"}
SCHEDULER_CLASSES = {"pndm": "PNDMScheduler", "plms": "PNDMScheduler", "ddim": "DDIMScheduler",
                     "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
                     "dpmpp_2m": "DPMSolverMultistepScheduler", "lms": "LMSDiscreteScheduler"}
SIZE64 = {"width": 64, "height": 64}


def sketch(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth random RGB picture (an init image)."""
    rs = np.random.RandomState(seed)
    small = Image.fromarray((rs.rand(max(2, size[1] // 8), max(2, size[0] // 8), 3) * 255).astype("uint8"))
    return small.resize(size, Image.Resampling.BICUBIC)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def result(store, item) -> Image.Image:
    img = Image.open(io.BytesIO(store.get(item["key"])))
    img.load()
    return img


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(int)


@lru_cache(maxsize=None)
def _pipe(models_dir: Path, model: str, task: str):
    import diffusers
    import torch

    from sdq.sources import builtin_path

    base = diffusers.DiffusionPipeline.from_pretrained(builtin_path(models_dir, model.removeprefix("builtin:")),
                                                       dtype=torch.float32)
    pipe = getattr(diffusers, CLASSES[task]).from_pipe(base) if type(base).__name__ != CLASSES[task] else base
    pipe.set_progress_bar_config(disable=True)
    return pipe


def direct(models_dir: Path, task: str, prompt: str, seed: int, steps: int, negative: str = "",
           scheduler: str = "pndm", image: Image.Image | None = None, model: str | None = None, **kw) -> np.ndarray:
    """The same image made in-process with plain diffusers (one thread, like the worker)."""
    import diffusers
    import torch

    torch.set_num_threads(1)
    pipe = _pipe(models_dir, model or MODELS[task], task)
    pipe.scheduler = getattr(diffusers, SCHEDULER_CLASSES[scheduler]).from_config(pipe.scheduler.config)
    if image is not None:
        kw["image"] = image
    out = pipe(prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=7.5,
               generator=torch.Generator("cpu").manual_seed(seed), **kw).images[0]
    return pixels(out)


def close(got: np.ndarray, want: np.ndarray) -> bool:
    return got.shape == want.shape and np.abs(got - want).max() <= 1


@pytest.fixture(scope="module")
def server(stack) -> str:
    return stack.env["SDQ_SERVER"]


def upload(client, img: Image.Image) -> str:
    return client.upload(png(img), "init.png")["key"]


def run_job(client, body: dict) -> dict:
    doc = wait_job(client, client.submit(body)["id"], timeout=240)
    assert doc["state"] == "succeeded", [it.get("error") for it in doc["items"]]
    return doc


def test_txt2img_every_scheduler_matches_diffusers(client, store, models_dir):
    names = list(SCHEDULER_CLASSES)
    doc = run_job(client, {"items": [{"prompt": "a castle", "scheduler": s, "seed": 11} for s in names],
                           "params": {"width": 64, "height": 64, "steps": 3}})
    images = {}
    for item, name in zip(doc["items"], names):
        img = result(store, item)
        info = parse_infotext(img.info["parameters"])
        assert img.size == (64, 64) and item["params"]["scheduler"] == name
        assert close(pixels(img), direct(models_dir, "txt2img", "a castle", 11, 3, scheduler=name, **SIZE64)), name
        images[name] = pixels(img)
        assert submit_body_from_infotext(info)["params"]["scheduler"] == name
    # the samplers really differ (plms is pndm's alias)
    assert np.array_equal(images["pndm"], images["plms"])
    assert np.abs(images["ddim"] - images["euler_a"]).mean() > 1


def test_negative_prompts_per_job_and_per_item(client, store, models_dir):
    doc = run_job(client, {"items": [{"prompt": "a boat", "seed": 3},
                                     {"prompt": "a boat", "seed": 3, "negative_prompt": "storm"}],
                           "params": {"width": 64, "height": 64, "steps": 3, "negative_prompt": "fog"}})
    first, second = (pixels(result(store, it)) for it in doc["items"])
    assert [it["negative_prompt"] for it in doc["items"]] == ["fog", "storm"]
    assert close(first, direct(models_dir, "txt2img", "a boat", 3, 3, negative="fog", **SIZE64))
    assert close(second, direct(models_dir, "txt2img", "a boat", 3, 3, negative="storm", **SIZE64))
    assert np.abs(first - second).mean() > 0.5
    assert parse_infotext(result(store, doc["items"][1]).info["parameters"])["negative_prompt"] == "storm"


def test_images_per_prompt_gives_consecutive_seeds_and_different_images(client, store, models_dir):
    doc = run_job(client, {"prompts": ["a tree", "a rock"],
                           "params": {"width": 64, "height": 64, "steps": 2, "seed": 500, "images_per_prompt": 3}})
    assert len(doc["items"]) == 6
    assert [it["seed"] for it in doc["items"]] == list(range(500, 506))
    assert [it["prompt"] for it in doc["items"]] == ["a tree"] * 3 + ["a rock"] * 3
    imgs = [pixels(result(store, it)) for it in doc["items"][:3]]
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(imgs[a] - imgs[b]).mean() > 5
    assert close(imgs[2], direct(models_dir, "txt2img", "a tree", 502, 2, **SIZE64))


def check_metadata(doc: dict, item: dict, img: Image.Image, task: str, extra: dict) -> dict:
    info = parse_infotext(img.info["parameters"])
    want = {"Pipeline": task, "Model": MODELS[task], "Seed": str(item["seed"]), "Steps": str(item["params"]["steps"]),
            "Sampler": "PNDM", "CFG scale": "7.5", "Device": "cpu", "Dtype": "fp32",
            "Size": f"{img.size[0]}x{img.size[1]}", **extra}
    assert {k: info.get(k) for k in want} == want
    assert info["prompt"] == item["prompt"] and info["negative_prompt"] == (item["negative_prompt"] or "")
    assert doc["model"] == MODELS[task] and doc["pipeline"] == task
    assert item["device"] == "cpu" and item["dtype"] == "fp32" and item["worker"]
    return info


@pytest.mark.parametrize("task, size, params, extra", [
    ("img2img", (64, 64), {"strength": 0.6}, {"Denoising strength": "0.6"}),
    ("depth2img", (64, 64), {"strength": 0.75}, {"Denoising strength": "0.75"}),
    ("upscale", (32, 32), {"noise_level": 30}, {"Noise level": "30", "Input size": "32x32"}),
])
def test_image_pipeline_through_the_queue_matches_diffusers(client, store, models_dir, task, size, params, extra):
    init = sketch(size, seed=len(task))
    key = upload(client, init)
    doc = run_job(client, {"items": [{"prompt": "a watercolor harbour", "negative_prompt": "people", "seed": 21}],
                           "model": MODELS[task], "pipeline": task,
                           "params": {"steps": 4, "init_image": key, **params}})
    item = doc["items"][0]
    img = result(store, item)
    out = (size[0] * 4, size[1] * 4) if task == "upscale" else size
    assert img.size == out
    assert item["init_image"] == key and (item["params"]["width"], item["params"]["height"]) == size
    info = check_metadata(doc, item, img, task, {**extra, "Init image": key})
    want = direct(models_dir, task, "a watercolor harbour", 21, 4, negative="people", image=init,
                  **{k: v for k, v in params.items()})
    assert close(pixels(img), want)
    # the comparison can fail: another seed makes another picture
    other = direct(models_dir, task, "a watercolor harbour", 22, 4, negative="people", image=init, **params)
    assert np.abs(pixels(img) - other).mean() > 0.5
    assert submit_body_from_infotext(info)["params"]["width"] == size[0]


def test_img2img_resizes_the_init_image_to_the_requested_size(client, store, models_dir):
    init = sketch((80, 72), seed=5)
    key = upload(client, init)
    doc = run_job(client, {"items": [{"prompt": "a red barn", "seed": 8},
                                     {"prompt": "a red barn", "seed": 8, "width": 64, "height": 48}],
                           "pipeline": "img2img", "params": {"steps": 3, "init_image": key}})
    native, resized = (result(store, it) for it in doc["items"])
    assert native.size == (80, 72) and resized.size == (64, 48)
    want = direct(models_dir, "img2img", "a red barn", 8, 3, image=init.resize((64, 48), Image.Resampling.LANCZOS),
                  strength=0.8)
    assert close(pixels(resized), want)


def test_manifest_records_everything_needed_to_reproduce(client, store):
    key = upload(client, sketch((64, 64)))
    doc = run_job(client, {"prompts": ["a lamp"], "pipeline": "img2img",
                           "params": {"steps": 2, "init_image": key, "negative_prompt": "dark", "seed": 4}})
    manifest = json.loads(store.get(f"jobs/{doc['id']}/manifest.json"))
    job, item = manifest["job"], manifest["items"][0]
    assert job["model"] == "builtin:tiny-sd" and job["pipeline"] == "img2img"
    for k, v in {"steps": 2, "guidance_scale": 7.5, "scheduler": "pndm", "strength": 0.8, "seed": 4}.items():
        assert job["params"][k] == v
    assert item["params"]["width"] == 64 and item["params"]["height"] == 64 and item["params"]["scheduler"] == "pndm"
    assert (item["seed"], item["negative_prompt"], item["init_image"]) == (4, "dark", key)
    assert item["device"] == "cpu" and item["dtype"] == "fp32" and item["key"]


@pytest.mark.parametrize("task", ["txt2img", "upscale"])
def test_infotext_resubmitted_makes_the_same_image(client, store, task):
    body = {"prompts": ["a quiet street"], "model": MODELS[task], "pipeline": task,
            "params": {"steps": 3, "negative_prompt": "cars", "scheduler": "euler", "guidance_scale": 6.0}}
    if task == "upscale":
        body["params"].update(init_image=upload(client, sketch((32, 24))), noise_level=50)
    else:
        body["params"].update(width=64, height=48)
    first = result(store, run_job(client, body)["items"][0])
    again_body = submit_body_from_infotext(parse_infotext(first.info["parameters"]))
    assert again_body["params"]["seed"] == int(parse_infotext(first.info["parameters"])["Seed"])
    again_body["params"]["cache"] = False  # made again from the infotext, not copied from the result cache
    second = result(store, run_job(client, again_body)["items"][0])
    assert second.size == first.size
    assert np.array_equal(pixels(first), pixels(second))


def test_cli_submit_with_init_image(stack, client, store, tmp_path):
    path = tmp_path / "sketch.jpg"
    sketch((64, 64)).save(path, format="JPEG")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a sketch of a cat\n")
    out = subprocess.run([sys.executable, "-m", "cli", "submit", str(prompts), "--pipeline", "img2img",
                          "--init-image", str(path), "--strength", "0.5", "--steps", "2", "--seed", "9",
                          "--wait", "--json"], capture_output=True, text=True, timeout=240,
                         env={**os.environ, **stack.env})
    assert out.returncode == 0, out.stderr
    doc = client.job(json.loads(out.stdout.strip().splitlines()[-1])["id"])
    item = doc["items"][0]
    assert doc["state"] == "succeeded" and item["init_image"].startswith("uploads/")
    assert result(store, item).size == (64, 64) and item["params"]["strength"] == 0.5


def test_watermark_is_embedded_on_request_and_inspect_reports_it(stack, client, store, tmp_path):
    body = {"prompts": ["a beach"], "params": {"width": 256, "height": 256, "steps": 2, "seed": 77}}
    marked = result(store, run_job(client, {**body, "params": {**body["params"], "watermark": True}})["items"][0])
    plain = result(store, run_job(client, body)["items"][0])
    assert "Watermark" in parse_infotext(marked.info["parameters"])
    assert "Watermark" not in parse_infotext(plain.info["parameters"])
    diff = np.abs(pixels(marked) - pixels(plain))
    # the same picture, slightly changed (on the tiny model's noise-art ~6/255 on average; another seed
    # differs by ~50)
    assert 0 < diff.mean() < 12
    for img, name, want in ((marked, "marked.png", "present"), (plain, "plain.png", "absent")):
        img.save(tmp_path / name, pnginfo=_pnginfo(img))
        out = subprocess.run([sys.executable, "-m", "cli", "inspect", str(tmp_path / name)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "Seed: 77" in out.stdout and f"Watermark: {want}" in out.stdout


def _pnginfo(img: Image.Image):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", img.info["parameters"])
    return info

