"""Flux.1 through the real queue on the tiny built-ins: txt2img, img2img, inpaint and edit (Kontext) each
equal a direct diffusers call of the same class with the same seed; true CFG with a negative prompt reaches
the pipeline and round-trips through infotext (read by sd-parsers too); a schnell-type model gets its
distilled defaults; a GGUF (Q8_0) transformer makes an image within a stated tolerance of the unquantized
one and says so; a transformer-only file loads with its config folder; bad Flux parameters are refused at
submit naming the field."""
from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from sdq import families
from sdq.modelinfo import is_distilled, model_info
from cli.client import Client
from sdq.infotext import parse_infotext
from sdq.sources import builtin_path
from tests.support.families import (SIZE, assert_equals_direct, assert_recorded, assert_refused, config_beside, digests,
                                    file_pipe, generate, gguf_pair, gguf_transformer, hires_want, job_inputs,
                                    negative_round_trip, one_worker, run)
from tests.support.memory_gate import left_queued_for_memory
from tests.test_pipelines import close, pixels, result

CLASSES = {"txt2img": "FluxPipeline", "img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline",
           "edit": "FluxKontextPipeline"}
"""The diffusers class a direct run uses for each pipeline (what the worker should use too)."""

DEFAULTS = {"guidance_scale": 3.5, "max_sequence_length": 256}
"""What the producer fills in for a dev-type Flux model (the direct call passes the same)."""


@pytest.fixture(scope="module")
def local_flux(tmp_path_factory, models_dir) -> str:
    """A copy of tiny-flux as a local diffusers folder: for all the producer knows, a full-size Flux.1."""
    return str(shutil.copytree(builtin_path(models_dir, "tiny-flux"), tmp_path_factory.mktemp("flux-local") / "m"))


@pytest.fixture(scope="module")
def flux_stack(stack_factory, local_flux):
    return one_worker(stack_factory, "flux", "w-flux", env={"SDQ_MODELS": local_flux})


@pytest.fixture(scope="module")
def flux(flux_stack) -> Client:
    return Client(flux_stack.env["SDQ_SERVER"])


@lru_cache(maxsize=None)
def _pipe(models_dir: Path, name: str, task: str):
    import diffusers
    import torch

    folder = builtin_path(models_dir, name)
    extra = {"transformer": gguf_transformer("FluxTransformer2DModel", folder)} if name.endswith("-gguf") else {}
    base = diffusers.FluxPipeline.from_pretrained(folder, dtype=torch.float32, **extra)
    pipe = base if task == "txt2img" else getattr(diffusers, CLASSES[task]).from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def direct(models_dir: Path, task: str, prompt: str, seed: int, steps: int = 3, name: str = "tiny-flux",
           **kw) -> np.ndarray:
    """The image plain diffusers makes with the model's own scheduler (one thread, like the worker)."""
    if task == "edit":  # the requested size, and the init image as given (see sdq.pipelines.CLASS_KWARGS)
        kw.update(max_area=kw["width"] * kw["height"], _auto_resize=False)
    return generate(_pipe(models_dir, name, task), prompt, seed, steps, **kw)


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-flux-schnell", "tiny-flux-gguf"])
def test_the_builtins_are_generated_the_same_every_time_and_read_as_flux(tmp_path, models_dir, name):
    from workers.builtins.registry import BUILDERS

    BUILDERS[name](tmp_path / name)
    built = builtin_path(models_dir, name)
    assert digests(tmp_path / name) == digests(built)
    assert families.detect(built) == families.FLUX
    assert is_distilled(built) == (name == "tiny-flux-schnell")  # read from the transformer's config


@pytest.mark.parametrize("task", list(CLASSES))
def test_each_pipeline_through_the_queue_equals_direct_diffusers(flux, store, models_dir, task):
    params, kw = job_inputs(flux, task, DEFAULTS)
    prompt = "make the sky red" if task == "edit" else "a red lighthouse"
    doc = run(flux, {"model": "builtin:tiny-flux", "pipeline": task, "prompts": [prompt], "params": params})
    img = assert_equals_direct(store, doc, lambda seed: direct(models_dir, task, prompt, seed, **kw))
    assert_recorded(doc, img, "builtin:tiny-flux", task, 3.5)


def test_true_cfg_with_a_negative_prompt_reaches_the_pipeline_and_round_trips(flux, store, models_dir, tmp_path):
    body = {"model": "builtin:tiny-flux", "prompts": ["a boat"],
            "params": {"steps": 3, "seed": 5, **SIZE, "negative_prompt": "fog", "true_cfg_scale": 4.0,
                       "guidance_scale": 2.0}}
    kw = {**DEFAULTS, **SIZE, "guidance_scale": 2.0}
    info, again = negative_round_trip(
        flux, store, body, tmp_path / "flux.png",
        direct(models_dir, "txt2img", "a boat", 5, negative_prompt="fog", true_cfg_scale=4.0, **kw),
        direct(models_dir, "txt2img", "a boat", 5, **kw))
    assert (info["True CFG scale"], info["CFG scale"], info["negative_prompt"]) == ("4.0", "2.0", "fog")
    assert again["params"]["true_cfg_scale"] == 4.0 and again["model"] == "builtin:tiny-flux"


def test_a_schnell_type_model_gets_its_distilled_defaults(flux, store, models_dir):
    doc = run(flux, {"model": "builtin:tiny-flux-schnell", "prompts": ["a fox"], "params": {"seed": 8, **SIZE}})
    item = doc["items"][0]["params"]
    assert (item["steps"], item["guidance_scale"], item["max_sequence_length"]) == (4, 0.0, 256)
    want = direct(models_dir, "txt2img", "a fox", 8, steps=4, name="tiny-flux-schnell", guidance_scale=0.0,
                  max_sequence_length=256, **SIZE)
    assert close(pixels(result(store, doc["items"][0])), want)


@pytest.mark.parametrize("model, pipeline, params, field", [
    ("builtin:tiny-flux", "txt2img", {"width": 72}, "params.width"),
    ("builtin:tiny-flux", "txt2img", {"original_width": 512}, "params.original_width"),
    ("builtin:tiny-flux", "txt2img", {"negative_prompt": "fog"}, "params.negative_prompt"),
    ("builtin:tiny-flux", "txt2img", {"true_cfg_scale": 4.0}, "params.true_cfg_scale"),
    ("builtin:tiny-flux", "txt2img", {"loras": [{"name": "builtin:tiny-lora"}]}, "params.loras[0].name"),
    ("builtin:tiny-flux", "img2img", {"init_image": "uploads/x.png", "controlnet": {"image": "uploads/x.png"}},
     "params.controlnet"),  # Flux's ControlNet is txt2img only (tests/test_controlnet_flux.py)
    ("builtin:tiny-flux-schnell", "txt2img", {"guidance_scale": 3.5}, "params.guidance_scale"),
    ("builtin:tiny-sd", "edit", {"init_image": "uploads/x.png"}, "pipeline"),
])
def test_bad_flux_requests_are_refused_naming_the_field(flux, model, pipeline, params, field):
    assert_refused(flux, {"model": model, "pipeline": pipeline, "prompts": ["x"], "params": params}, field)


GGUF_TOLERANCE = {"max": 4, "mean": 0.5}
"""How far (pixel values /255) the Q8_0 transformer's image may be from the unquantized one's: measured here
max 1, mean ~0.14 at 64x64 and 128x128, 4 steps (another seed: mean ~44)."""


def test_the_gguf_builtin_makes_an_image_within_tolerance_of_the_unquantized_and_records_it(flux, store, models_dir):
    body = {"prompts": ["a tower"], "params": {"steps": 4, "seed": 12, **SIZE}}
    plain, quant, b = gguf_pair(flux, store, body, "builtin:tiny-flux", "builtin:tiny-flux-gguf", GGUF_TOLERANCE)
    assert close(b, direct(models_dir, "txt2img", "a tower", 12, steps=4, name="tiny-flux-gguf", **DEFAULTS, **SIZE))
    info = parse_infotext(result(store, quant).info["parameters"])
    assert info["Dtype"] == "fp32 (gguf Q8_0)" and info["Model"] == "builtin:tiny-flux-gguf"
    assert quant["key"] != plain["key"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, models_dir) -> dict[str, Path]:
    """tiny-flux's transformer alone as a file (diffusers' key names) and tiny-flux-gguf's GGUF transformer
    alone, each with a config folder beside it holding the base model's other components."""
    d = tmp_path_factory.mktemp("flux-files")
    out = {}
    for name, weights, target in (("tiny-flux", "diffusion_pytorch_model.safetensors", "flux-dev.safetensors"),
                                  ("tiny-flux-gguf", "diffusion_pytorch_model.gguf", "flux-dev-Q8_0.gguf")):
        src = builtin_path(models_dir, name)
        config_beside(src, d / Path(target).stem, weights)
        out[name] = Path(shutil.copy(src / "transformer" / weights, d / target))
    return out


def test_a_transformer_file_loads_with_its_config_folder_and_makes_the_builtins_image(files, models_dir):
    for name, file in files.items():
        info = model_info(str(file))
        assert info.family.name == families.FLUX
        got = generate(file_pipe(file), "a tower", 4, **DEFAULTS, **SIZE)
        assert np.array_equal(got, direct(models_dir, "txt2img", "a tower", 4, name=name, **DEFAULTS, **SIZE))
    # the producer counts a GGUF file's own size, not the full-precision transformer's
    gguf_need = model_info(str(files["tiny-flux-gguf"])).memory
    assert gguf_need.weights_gb < families.FAMILIES["flux"].memory.weights_gb


def test_the_hires_fix_runs_flux_img2img_for_its_second_pass(flux, store, models_dir):
    first = {"steps": 3, "seed": 3, **SIZE}
    doc = run(flux, {"model": "builtin:tiny-flux", "prompts": ["a hill"],
                     "params": {**first, "hires": {"scale": 2, "strength": 0.5, "steps": 4}}})
    img = result(store, doc["items"][0])
    assert img.size == (128, 128)
    want = hires_want(lambda *a, **kw: direct(models_dir, *a, **kw), DEFAULTS)
    assert np.abs(pixels(img) - want).max() <= 2


def test_a_worker_without_the_memory_for_a_full_size_flux_never_takes_its_item(flux, flux_stack, local_flux):
    """The local folder is, for all the producer knows, a full-size Flux.1 (~67 GB in fp32 at 64x64): more
    than this CPU worker has; it leaves the item queued, and the built-in runs meanwhile."""
    doc = left_queued_for_memory(flux, flux_stack, "w-flux", "flux",
                                 {"model": local_flux, "prompts": ["heavy"], "params": {"steps": 2, **SIZE}},
                                 {"model": "builtin:tiny-flux", "prompts": ["light"], "params": {"steps": 2, **SIZE}})
    assert doc["params"]["guidance_scale"] == 3.5  # read as a Flux model at submit: its defaults recorded
    flux.cancel(doc["id"])
