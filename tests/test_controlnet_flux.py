"""ControlNet on Flux.1 (issue 33, item 4): `builtin:tiny-flux` with `builtin:tiny-controlnet-flux` through the queue
equals a direct `FluxControlNetPipeline` call, the control image changes the picture, a later job without it on the
same warm worker makes the plain image again, and a ControlNet of the other family is refused at submit."""
from __future__ import annotations

import hashlib
import json
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from cli.client import Client
from storage.models import push
from tests.conftest import wait_job
from sdq.families import FLUX, SD
from sdq.options import controlnet
from sdq.sources import builtin_path
from tests.test_pipelines import close, pixels, result, run_job, sketch, upload

FLUX_CN = "builtin:tiny-controlnet-flux"
SIZE = {"width": 64, "height": 64}
STEPS = 3
KW = {"guidance_scale": 3.5, "max_sequence_length": 256, **SIZE}
"""What the producer fills in for a dev-type Flux model (the direct calls pass the same)."""
WORKER = "w-fluxcn"
PUSHED = "pushed-flux-controlnet"
"""The name the built-in Flux ControlNet's folder is pushed under (its family not known at submit)."""


@pytest.fixture(scope="module")
def folder(models_dir, tmp_path_factory) -> Path:
    """A copy of the built-in Flux ControlNet's files as a local ControlNet folder."""
    out = tmp_path_factory.mktemp("fluxcn") / "flux-controlnet"
    shutil.copytree(builtin_path(models_dir, "tiny-controlnet-flux"), out, ignore=shutil.ignore_patterns(".*"))
    return out


@pytest.fixture(scope="module")
def fluxcn(stack_factory, folder) -> Client:
    """A stack with one worker, so every job of the module runs on the same warm worker."""
    st = stack_factory("fluxcn", env={"SDQ_MODELS": f"{folder},store:{PUSHED}"})
    st.worker(WORKER, "--device", "cpu", "--threads", "1")
    yield Client(st.env["SDQ_SERVER"])
    st.stop()


@pytest.fixture(scope="module")
def controls(fluxcn) -> dict[str, str]:
    return {"a": upload(fluxcn, sketch((64, 64), seed=61)), "b": upload(fluxcn, sketch((64, 64), seed=62))}


@lru_cache(maxsize=None)
def _pipe(models_dir: Path, with_controlnet: bool):
    import diffusers
    import torch

    base = diffusers.FluxPipeline.from_pretrained(builtin_path(models_dir, "tiny-flux"), dtype=torch.float32)
    pipe = base
    if with_controlnet:
        net = diffusers.FluxControlNetModel.from_pretrained(builtin_path(models_dir, "tiny-controlnet-flux"),
                                                            dtype=torch.float32)
        pipe = diffusers.FluxControlNetPipeline.from_pipe(base, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def direct(models_dir: Path, seed: int, control_seed: int | None) -> np.ndarray:
    """The image plain diffusers makes (one thread, like the worker); with a control image: FluxControlNetPipeline."""
    import torch

    torch.set_num_threads(1)
    extra = {} if control_seed is None else {"control_image": sketch((64, 64), seed=control_seed),
                                             "controlnet_conditioning_scale": 1.0}
    pipe = _pipe(models_dir, control_seed is not None)
    out = pipe("a lighthouse", num_inference_steps=STEPS, generator=torch.Generator("cpu").manual_seed(seed),
               **KW, **extra)
    return pixels(out.images[0])


def _job(control: str | None, seed: int, model: str = "builtin:tiny-flux", net: str | None = None, **params) -> dict:
    unit = {"image": control, **({"model": net} if net else {})}
    extra = {"controlnet": unit} if control else {}
    return {"model": model, "prompts": ["a lighthouse"],
            "params": {**SIZE, "steps": STEPS, "seed": seed, "cache": False, **extra, **params}}


def test_the_builtin_is_generated_the_same_every_time_and_fits_tiny_flux(tmp_path, models_dir):
    from workers.builtins.registry import BUILDERS

    BUILDERS["tiny-controlnet-flux"](tmp_path / "cn")
    built = builtin_path(models_dir, "tiny-controlnet-flux")
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(built.iterdir()) if p.is_file()}
    again = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "cn").iterdir())}
    assert digest == again
    config = json.loads((built / "config.json").read_text())
    flux = json.loads((builtin_path(models_dir, "tiny-flux") / "transformer" / "config.json").read_text())
    assert config["_class_name"] == "FluxControlNetModel" and config["num_mode"] is None
    assert {k: config[k] for k in ("in_channels", "joint_attention_dim", "pooled_projection_dim", "guidance_embeds")} \
        == {k: flux[k] for k in ("in_channels", "joint_attention_dim", "pooled_projection_dim", "guidance_embeds")}
    assert controlnet.family_of(FLUX_CN) == FLUX and controlnet.folder_family(str(built)) == FLUX
    assert controlnet.class_for("txt2img", FLUX) == "FluxControlNetPipeline"
    assert controlnet.USES["txt2img"].kwarg_for(FLUX) == "control_image"
    assert controlnet.USES["txt2img"].kwarg_for(SD) == "image"


def test_flux_controlnet_through_the_queue_equals_diffusers_then_a_plain_job_is_plain(fluxcn, store, models_dir,
                                                                                     controls):
    """With the family's built-in ControlNet (named by default) the image is FluxControlNetPipeline's; another
    control image gives another image; a later job without it on the same warm worker is FluxPipeline's."""
    doc = run_job(fluxcn, _job(controls["a"], seed=21))
    item = doc["items"][0]
    assert item["params"]["controlnet"]["model"] == FLUX_CN and item["worker"] == WORKER
    got = pixels(result(store, item))
    want = direct(models_dir, 21, control_seed=61)
    assert close(got, want), np.abs(got - want).max()
    plain = direct(models_dir, 21, control_seed=None)
    assert np.abs(got - plain).mean() > 2.0
    other = pixels(result(store, run_job(fluxcn, _job(controls["b"], seed=21))["items"][0]))
    assert np.abs(got - other).mean() > 2.0  # measured ~10/255: the control image steers the picture
    later = run_job(fluxcn, _job(None, seed=21))["items"][0]
    assert later["worker"] == WORKER and "controlnet" not in later["params"]
    assert close(pixels(result(store, later)), plain)


def test_the_infotext_names_the_flux_controlnet(fluxcn, store, controls):
    from sdq.infotext import parse_infotext

    item = run_job(fluxcn, _job(controls["a"], seed=22, net=FLUX_CN))["items"][0]
    info = parse_infotext(result(store, item).info["parameters"])
    assert f"Model: {FLUX_CN}" in info["ControlNet 0"]


def test_the_catalog_lists_flux_controlnets_under_flux_models_only(fluxcn, folder):
    """The built-in and the local folder (its family read from `config.json`) under tiny-flux, for txt2img only."""
    models = {m["id"]: m for m in fluxcn.session.get(f"{fluxcn.server}/v1/models", timeout=30).json()["models"]}
    flux = models["builtin:tiny-flux"]["options"]["controlnet"]
    assert flux == {"pipelines": ["txt2img"], "ids": [FLUX_CN, str(folder)]}
    assert models["builtin:tiny-sd"]["options"]["controlnet"]["ids"] == ["builtin:tiny-controlnet"]


@pytest.mark.parametrize("model, net, params, field, code", [
    ("builtin:tiny-flux", "builtin:tiny-controlnet", {}, "params.controlnet.model", "family_mismatch"),
    ("builtin:tiny-flux", "builtin:tiny-sdxl-controlnet", {}, "params.controlnet.model", "family_mismatch"),
    ("builtin:tiny-sd", FLUX_CN, {}, "params.controlnet.model", "family_mismatch"),
    ("builtin:tiny-sd", "FOLDER", {}, "params.controlnet.model", "family_mismatch"),
    ("builtin:tiny-flux", FLUX_CN, {"hires": {"scale": 1.5}}, "params.hires", "unsupported_controlnet"),
])
def test_a_controlnet_of_the_other_family_is_a_422_naming_the_field(fluxcn, folder, controls, model, net, params,
                                                                   field, code):
    net = str(folder) if net == "FOLDER" else net  # a local Flux ControlNet folder: its family read from config.json
    answer = fluxcn.session.post(f"{fluxcn.server}/v1/jobs", json=_job(controls["a"], 1, model, net, **params),
                                 timeout=30)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["field"], error["code"]) == (field, code), error


def test_flux_img2img_with_a_controlnet_is_a_422(fluxcn, controls):
    """Flux's ControlNet rows are txt2img only (see `sdq.options.controlnet.USES`)."""
    body = _job(controls["a"], 1, init_image=controls["b"])
    answer = fluxcn.session.post(f"{fluxcn.server}/v1/jobs", json={**body, "pipeline": "img2img"}, timeout=30)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "params.controlnet"


def test_a_pushed_flux_controlnet_on_an_sd_model_fails_its_item_at_the_worker_saying_why(fluxcn, store, folder,
                                                                                         controls):
    """The producer cannot read a pushed ControlNet's family; the worker reads its `config.json` before loading."""
    push(store, folder, PUSHED)
    doc = wait_job(fluxcn, fluxcn.submit(_job(controls["a"], 3, "builtin:tiny-sd", f"store:{PUSHED}"))["id"],
                   timeout=240)
    assert doc["state"] == "failed", doc
    error = doc["items"][0]["error"]
    assert "flux family" in str(error) and f"store:{PUSHED}" in str(error), error
