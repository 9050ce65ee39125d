"""SDXL and SD3 models through the real queue: each family x {txt2img, img2img} equals a direct
diffusers call with the same seed, family parameters reach the pipeline, a local SDXL folder loads
by path, and a worker without the memory a family needs never takes its items."""
from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdq import families
from cli.client import Client
from sdq.infotext import parse_infotext, submit_body_from_infotext
from sdq.models import BUILTIN_FAMILIES
from sdq.sources import builtin_path
from tests.conftest import wait_job
from tests.support.memory_gate import left_queued_for_memory, run, worker_memory
from tests.test_pipelines import close, pixels, png, result, sketch

FAMILY_DEFAULTS = {"tiny-sdxl": {"guidance_scale": 5.0}, "tiny-sd3": {"guidance_scale": 7.0, "max_sequence_length": 256}}
"""What the producer fills in for each built-in's family (the direct call passes the same)."""


HUB_SD3 = "sdq-test/tiny-sd3-cached"
SNAPSHOT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, models_dir) -> dict[str, str]:
    """Copies of the tiny SDXL and SD3 built-ins as local diffusers folders (their family read from
    model_index.json; the producer cannot know they are tiny), and tiny-sd3 as a hub repo in the
    worker's hub cache (a family the producer cannot know at submit)."""
    d = tmp_path_factory.mktemp("families")
    repo = models_dir / "hub" / ("models--" + HUB_SD3.replace("/", "--"))
    if not repo.exists():
        shutil.copytree(builtin_path(models_dir, "tiny-sd3"), repo / "snapshots" / SNAPSHOT)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(SNAPSHOT)
    out = {name: str(shutil.copytree(builtin_path(models_dir, name), d / name)) for name in FAMILY_DEFAULTS}
    # tiny-sdxl as one original-layout file, as SDXL checkpoints are shared, with its config folder beside it
    from tests.support.ldm_sdxl import write_sdxl_single_file

    src = builtin_path(models_dir, "tiny-sdxl")
    out["sdxl-file"] = str(write_sdxl_single_file(src, d / "tiny-sdxl-sgm.safetensors"))
    shutil.copytree(src, d / "tiny-sdxl-sgm", ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return out


@pytest.fixture(scope="module")
def fstack(stack_factory, folders):
    st = stack_factory("families", env={"SDQ_MODELS": ",".join([*folders.values(), HUB_SD3])})
    st.worker("w-families", "--device", "cpu", "--threads", "1")
    return st


@pytest.fixture(scope="module")
def fclient(fstack) -> Client:
    return Client(fstack.env["SDQ_SERVER"])


@lru_cache(maxsize=None)
def _pipe(folder: Path, task: str):
    import diffusers
    import torch

    from workers.loading.checkpoints import absent_components

    base = diffusers.AutoPipelineForText2Image.from_pretrained(folder, dtype=torch.float32, **absent_components(folder))
    auto = {"img2img": diffusers.AutoPipelineForImage2Image, "inpaint": diffusers.AutoPipelineForInpainting}
    pipe = auto[task].from_pipe(base) if task in auto else base
    pipe.set_progress_bar_config(disable=True)
    return pipe


def direct(models_dir: Path, name: str, prompt: str, seed: int, steps: int, image=None, **kw) -> np.ndarray:
    """The image plain diffusers makes with the model's own scheduler and the family's defaults."""
    import torch

    torch.set_num_threads(1)
    task = "inpaint" if "mask_image" in kw else "img2img" if image is not None else "txt2img"
    pipe = _pipe(builtin_path(models_dir, name), task)
    if image is not None:
        kw["image"] = image
    kw = {**FAMILY_DEFAULTS[name], **kw}
    out = pipe(prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed), **kw)
    return pixels(out.images[0])


@pytest.mark.parametrize("name", ["tiny-sdxl", "tiny-sd3"])
@pytest.mark.parametrize("task", ["txt2img", "img2img"])
def test_each_family_through_the_queue_equals_direct_diffusers(fclient, fstack, store, models_dir, name, task):
    params = {"steps": 3, "seed": 31, "width": 64, "height": 64}
    kw = {"width": 64, "height": 64}
    init = None
    if task == "img2img":
        init = sketch((64, 64), seed=3)
        params.update(init_image=fclient.upload(png(init), "init.png")["key"], strength=0.7)
        kw = {"strength": 0.7, **({"width": 64, "height": 64} if name == "tiny-sd3" else {})}
    doc = run(fclient, {"model": f"builtin:{name}", "pipeline": task, "prompts": ["a red lighthouse"],
                        "params": params})
    img = result(store, doc["items"][0])
    assert img.size == (64, 64)
    want = direct(models_dir, name, "a red lighthouse", 31, 3, image=init, **kw)
    assert close(pixels(img), want)
    other = direct(models_dir, name, "a red lighthouse", 32, 3, image=init, **kw)
    assert np.abs(pixels(img) - other).mean() > 0.5  # the comparison can fail: another seed differs
    info = parse_infotext(img.info["parameters"])
    family = families.FAMILIES[BUILTIN_FAMILIES[f"builtin:{name}"]]
    assert info["Model"] == f"builtin:{name}" and info["Pipeline"] == task
    assert doc["items"][0]["params"]["scheduler"] == family.default_scheduler


def test_sdxl_inpaint_through_the_queue_equals_direct_diffusers(fclient, store, models_dir):
    from PIL import ImageDraw

    init = sketch((64, 64), seed=3)
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    params = {"steps": 3, "seed": 41, "width": 64, "height": 64, "strength": 0.8,
              "init_image": fclient.upload(png(init), "init.png")["key"],
              "mask_image": fclient.upload(png(mask), "mask.png")["key"]}
    doc = run(fclient, {"model": "builtin:tiny-sdxl", "pipeline": "inpaint", "prompts": ["a red lighthouse"],
                        "params": params})
    img = result(store, doc["items"][0])
    kw = {"width": 64, "height": 64, "strength": 0.8}
    want = direct(models_dir, "tiny-sdxl", "a red lighthouse", 41, 3, image=init, mask_image=mask, **kw)
    assert close(pixels(img), want)
    other = direct(models_dir, "tiny-sdxl", "a red lighthouse", 41, 3, image=init,
                   mask_image=mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT), **kw)
    assert np.abs(pixels(img) - other).mean() > 0.5  # the comparison can fail: another mask differs
    assert parse_infotext(img.info["parameters"])["Pipeline"] == "inpaint"


def test_family_parameters_reach_the_pipeline_and_round_trip_through_infotext(fclient, store, models_dir):
    size = {"width": 64, "height": 64}
    sdxl = run(fclient, {"model": "builtin:tiny-sdxl", "prompts": ["a boat"],
                         "params": {"steps": 3, "seed": 5, **size, "original_width": 256, "crop_left": 16}})
    img = result(store, sdxl["items"][0])
    want = direct(models_dir, "tiny-sdxl", "a boat", 5, 3, original_size=(64, 256), crops_coords_top_left=(0, 16),
                  **size)
    assert close(pixels(img), want)
    assert np.abs(pixels(img) - direct(models_dir, "tiny-sdxl", "a boat", 5, 3, **size)).mean() > 0.5
    info = parse_infotext(img.info["parameters"])
    assert (info["Original width"], info["Crop left"]) == ("256", "16") and "Crop top" not in info

    sd3 = run(fclient, {"model": "builtin:tiny-sd3", "prompts": ["a boat"],
                        "params": {"steps": 3, "seed": 5, **size, "max_sequence_length": 77}})
    img3 = result(store, sd3["items"][0])
    assert close(pixels(img3), direct(models_dir, "tiny-sd3", "a boat", 5, 3, max_sequence_length=77, **size))
    body = submit_body_from_infotext(parse_infotext(img3.info["parameters"]))
    assert body["params"]["max_sequence_length"] == 77 and body["params"]["scheduler"] == "flow_euler"
    body["params"]["cache"] = False
    again = result(store, run(fclient, body)["items"][0])
    assert np.array_equal(pixels(again), pixels(img3))


def test_a_bad_family_parameter_is_refused_at_submit_naming_the_field(fclient):
    for body, field in (({"model": "builtin:tiny-sd", "params": {"max_sequence_length": 64}}, "max_sequence_length"),
                        ({"model": "builtin:tiny-sd3", "params": {"scheduler": "ddim"}}, "scheduler")):
        resp = fclient.session.post(f"{fclient.server}/v1/jobs", json={"prompts": ["x"], **body})
        assert resp.status_code == 422 and resp.json()["error"]["field"] == f"params.{field}", resp.text


def test_a_local_sdxl_folder_and_single_file_load_by_path_and_make_the_builtins_image(fclient, folders, store):
    need = families.FAMILIES["sdxl"].memory.need_gb("fp32", 64 * 64)
    if worker_memory(fclient) < need:
        pytest.skip(f"this machine has less than the {need} GB an SDXL checkpoint is estimated to need in fp32")
    body = {"prompts": ["a hill"], "params": {"steps": 2, "seed": 9, "width": 64, "height": 64,
                                              "scheduler": "euler", "guidance_scale": 5.0}}
    from_folder = result(store, run(fclient, {**body, "model": folders["tiny-sdxl"]})["items"][0])
    from_file = result(store, run(fclient, {**body, "model": folders["sdxl-file"]})["items"][0])
    builtin = result(store, run(fclient, {**body, "model": "builtin:tiny-sdxl"})["items"][0])
    assert np.array_equal(pixels(from_folder), pixels(builtin))
    assert np.array_equal(pixels(from_file), pixels(builtin))


def test_a_worker_without_the_memory_never_takes_the_item(fclient, fstack, folders):
    """The SD3 folder is, for all the producer knows, a full-size SD3 (with T5): ~32 GB in fp32,
    more than this CPU worker has; it leaves the item queued, and the built-in runs meanwhile."""
    size = {"steps": 2, "width": 64, "height": 64}
    doc = left_queued_for_memory(fclient, fstack, "w-families", "sd3",
                                 {"model": folders["tiny-sd3"], "prompts": ["heavy"], "params": size},
                                 {"model": "builtin:tiny-sd3", "prompts": ["light"], "params": size})
    fclient.cancel(doc["id"])


def test_an_sd3_hub_id_loads_with_its_family_and_a_wrong_scheduler_fails_naming_it(fclient, store, models_dir):
    """The producer cannot read a hub id's family, so SD defaults go through; the worker loads the
    SD3 class from model_index.json and fails a noise-prediction scheduler with a clear error."""
    body = {"model": HUB_SD3, "prompts": ["a dune"], "params": {"steps": 3, "seed": 4, "width": 64, "height": 64}}
    doc = wait_job(fclient, fclient.submit(body)["id"], timeout=240)
    assert doc["state"] == "failed" and "'pndm' does not run Stable Diffusion 3.x" in doc["items"][0]["error"]
    body["params"].update(scheduler="flow_euler", guidance_scale=7.0)
    img = result(store, run(fclient, body)["items"][0])
    assert close(pixels(img), direct(models_dir, "tiny-sd3", "a dune", 4, 3, width=64, height=64))
