"""Flux.2 through the real queue on the tiny Klein-shaped built-ins: txt2img, inpaint and edit (the reference-image
input) each equal a direct diffusers call of the same class with the same seed; an edit job of several prompts
gives each its own reference image; a step-distilled Klein gets its few-step defaults; the infotext is read by
sd-parsers and makes the same image again; requests Flux.2 cannot take (img2img, a negative prompt, another family's
parameter, a side off its multiple) are refused at submit naming the field."""
from __future__ import annotations

import shutil
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.client import Client
from sdq import families
from sdq.infotext import parse_infotext, submit_body_from_infotext
from sdq.modelinfo import is_distilled, model_info
from sdq.sources import builtin_path
from tests.support import families as shared
from tests.support.families import (SIZE, assert_equals_direct, assert_recorded, assert_refused, config_beside,
                                     digests, file_pipe, generate, gguf_pair, gguf_transformer, job_inputs, lora_pipe,
                                     one_worker, plain_styled_again, read_by_sd_parsers, remade, with_lora)
from tests.test_pipelines import close, pixels, png, result, sketch

CLASSES = {"txt2img": "Flux2KleinPipeline", "inpaint": "Flux2KleinInpaintPipeline", "edit": "Flux2KleinPipeline"}
"""The diffusers class a direct run uses for each pipeline (what the worker should use too)."""

DEFAULTS = {"guidance_scale": 4.0, "max_sequence_length": 256}
"""What the producer fills in for a Klein base model (the direct call passes the same)."""

run = partial(shared.run, timeout=300)


@pytest.fixture(scope="module")
def flux2(stack_factory) -> Client:
    st = one_worker(stack_factory, "flux2", "w-flux2", "--max-batch", "2")  # items may share a call
    return Client(st.env["SDQ_SERVER"])


@lru_cache(maxsize=None)
def _pipe(models_dir: Path, name: str, task: str):
    import diffusers
    import torch

    folder = builtin_path(models_dir, name)
    extra = {"transformer": gguf_transformer("Flux2Transformer2DModel", folder)} if name.endswith("-gguf") else {}
    base = diffusers.Flux2KleinPipeline.from_pretrained(folder, dtype=torch.float32, **extra)
    pipe = base if task != "inpaint" else diffusers.Flux2KleinInpaintPipeline.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def direct(models_dir: Path, task: str, prompt: str, seed: int, steps: int = 3, name: str = "tiny-flux2",
           **kw) -> np.ndarray:
    """The image plain diffusers makes with the model's own scheduler (one thread, like the worker)."""
    return generate(_pipe(models_dir, name, task), prompt, seed, steps, **kw)


@pytest.mark.parametrize("name", ["tiny-flux2", "tiny-flux2-distilled", "tiny-flux2-gguf"])
def test_the_builtins_are_generated_the_same_every_time_and_read_as_klein(tmp_path, models_dir, name):
    from workers.builtins.registry import BUILDERS

    BUILDERS[name](tmp_path / name)
    built = builtin_path(models_dir, name)
    assert digests(tmp_path / name) == digests(built)
    assert families.detect(built) == families.FLUX2_KLEIN
    assert is_distilled(built, families.FLUX2_KLEIN) == name.endswith("-distilled")  # read from model_index.json


@pytest.mark.parametrize("task", list(CLASSES))
def test_each_pipeline_through_the_queue_equals_direct_diffusers(flux2, store, models_dir, task):
    params, kw = job_inputs(flux2, task, DEFAULTS)
    prompt = "make the sky red" if task == "edit" else "a red lighthouse"
    doc = run(flux2, {"model": "builtin:tiny-flux2", "pipeline": task, "prompts": [prompt], "params": params})
    img = assert_equals_direct(store, doc, lambda seed: direct(models_dir, task, prompt, seed, **kw))
    if task != "txt2img":  # the image input counts: without it the same call makes another image (a reference
        # image changes the random-weight model's output by ~0.2/255 on average: enough to fail `close`)
        without = direct(models_dir, "txt2img", prompt, 31, **{k: v for k, v in kw.items()
                                                                 if k not in ("image", "mask_image", "strength")})
        assert not close(pixels(img), without)
    assert_recorded(doc, img, "builtin:tiny-flux2", task, 4.0)


def test_an_edit_job_of_several_prompts_gives_each_its_own_reference_image(flux2, store, models_dir):
    """Flux.2 reads a list of `image`s as references for every prompt of the call: the worker calls it one prompt
    at a time, so each item equals a direct call with its one init image."""
    first, second = sketch((64, 64), seed=4), sketch((64, 64), seed=5)
    items = [{"prompt": "a boat", "init_image": flux2.upload(png(im), f"i{n}.png")["key"]}
             for n, im in enumerate((first, second))]
    doc = run(flux2, {"model": "builtin:tiny-flux2", "pipeline": "edit", "items": items,
                      "params": {"steps": 3, "seed": 9, **SIZE}})
    for item, init in zip(sorted(doc["items"], key=lambda it: it["index"]), (first, second)):
        got = pixels(result(store, item))
        assert item["batch"] == 1  # called alone, though the worker takes two items per call
        assert close(got, direct(models_dir, "edit", "a boat", item["seed"], image=init, **DEFAULTS, **SIZE))
        both = direct(models_dir, "edit", "a boat", item["seed"], image=[first, second], **DEFAULTS, **SIZE)
        assert not close(got, both)  # what one call with both init images would have made


def test_a_distilled_klein_gets_its_few_step_defaults(flux2, store, models_dir):
    doc = run(flux2, {"model": "builtin:tiny-flux2-distilled", "prompts": ["a fox"], "params": {"seed": 8, **SIZE}})
    item = doc["items"][0]["params"]
    assert (item["steps"], item["guidance_scale"], item["max_sequence_length"]) == (4, 0.0, 256)
    want = direct(models_dir, "txt2img", "a fox", 8, steps=4, name="tiny-flux2-distilled", guidance_scale=0.0,
                  max_sequence_length=256, **SIZE)
    assert close(pixels(result(store, doc["items"][0])), want)


def test_the_infotext_is_read_by_sd_parsers_and_makes_the_same_image_again(flux2, store, tmp_path):
    body = {"model": "builtin:tiny-flux2", "prompts": ["a castle"],
            "params": {"steps": 3, "seed": 5, **SIZE, "guidance_scale": 2.5, "max_sequence_length": 128}}
    img = result(store, run(flux2, body)["items"][0])
    text = img.info["parameters"]
    info = parse_infotext(text)
    assert (info["CFG scale"], info["Max sequence length"], info["Steps"]) == ("2.5", "128", "3")
    parsed = read_by_sd_parsers(text, tmp_path / "flux2.png", img)
    assert parsed is not None and "a castle" in parsed.full_prompt
    assert parsed.samplers[0].parameters["seed"] == "5" and parsed.samplers[0].parameters["cfg_scale"] == "2.5"
    again = submit_body_from_infotext(info)
    assert again["model"] == "builtin:tiny-flux2" and again["params"]["max_sequence_length"] == 128
    assert np.array_equal(remade(flux2, store, again), pixels(img))


@pytest.mark.parametrize("model, pipeline, params, field", [
    ("builtin:tiny-flux2", "txt2img", {"width": 72}, "params.width"),
    ("builtin:tiny-flux2", "txt2img", {"height": 8}, "params.height"),
    ("builtin:tiny-flux2", "txt2img", {"original_width": 512}, "params.original_width"),
    ("builtin:tiny-flux2", "txt2img", {"true_cfg_scale": 4.0}, "params.true_cfg_scale"),
    ("builtin:tiny-flux2", "txt2img", {"negative_prompt": "fog"}, "params.negative_prompt"),
    ("builtin:tiny-flux2", "txt2img", {"loras": [{"name": "builtin:tiny-lora"}]}, "params.loras[0].name"),
    ("builtin:tiny-flux2", "txt2img", {"hires": {"scale": 2}}, "params.hires"),
    ("builtin:tiny-flux2", "txt2img", {"preview": True}, "params.preview"),
    ("builtin:tiny-flux2", "img2img", {"init_image": "uploads/x.png"}, "pipeline"),
    ("builtin:tiny-flux2-distilled", "txt2img", {"guidance_scale": 4.0}, "params.guidance_scale"),
])
def test_bad_flux2_requests_are_refused_naming_the_field(flux2, model, pipeline, params, field):
    assert_refused(flux2, {"model": model, "pipeline": pipeline, "prompts": ["x"], "params": params}, field)


GGUF_TOLERANCE = {"max": 4, "mean": 0.5}
"""How far (pixel values /255) the Q8_0 transformer's image may be from the unquantized one's: measured here max 2,
mean ~0.26 at 64x64, 4 steps (another seed: mean ~40)."""


def test_the_gguf_builtin_makes_an_image_within_tolerance_of_the_unquantized_and_records_it(flux2, store, models_dir):
    body = {"prompts": ["a tower"], "params": {"steps": 4, "seed": 12, **SIZE}}
    _, _, b = gguf_pair(flux2, store, body, "builtin:tiny-flux2", "builtin:tiny-flux2-gguf", GGUF_TOLERANCE)
    assert close(b, direct(models_dir, "txt2img", "a tower", 12, steps=4, name="tiny-flux2-gguf", **DEFAULTS, **SIZE))


def test_a_transformer_file_loads_with_its_config_folder_and_makes_the_builtins_image(tmp_path, models_dir):
    """tiny-flux2's transformer alone as a `.safetensors` file (diffusers' key names) and tiny-flux2-gguf's as a
    `.gguf` file, each with a config folder beside it holding the other components: the producer reads them as
    Klein, the worker's loader makes the built-ins' images."""
    for name, weights, target in (("tiny-flux2", "diffusion_pytorch_model.safetensors", "klein.safetensors"),
                                  ("tiny-flux2-gguf", "diffusion_pytorch_model.gguf", "klein-Q8_0.gguf")):
        src = builtin_path(models_dir, name)
        config_beside(src, tmp_path / Path(target).stem, weights)
        file = Path(shutil.copy(src / "transformer" / weights, tmp_path / target))
        assert model_info(str(file)).family.name == families.FLUX2_KLEIN
        got = generate(file_pipe(file), "a tower", 4, **DEFAULTS, **SIZE)
        assert np.array_equal(got, direct(models_dir, "txt2img", "a tower", 4, name=name, **DEFAULTS, **SIZE))


def test_a_flux2_lora_changes_the_image_like_diffusers_and_the_next_job_without_it_does_not(
        flux2, store, models_dir, tmp_path):
    """`builtin:tiny-lora-flux2` (diffusers' layout, family read from its tensor names) through the worker's
    adapter hook makes the image diffusers' own `load_lora_weights` + `set_adapters` makes; the next job on the same
    warm worker without it makes the never-adapted image; sd-parsers reads its tag from the infotext."""
    from sdq import loras

    assert loras.adapter_family("builtin:tiny-lora-flux2") == families.FLUX2_KLEIN
    body = {"model": "builtin:tiny-flux2", "prompts": ["a hill"], "params": {"steps": 3, "seed": 21, **SIZE}}
    lora = [{"name": "builtin:tiny-lora-flux2", "scale": 0.75}]
    plain, styled, again = plain_styled_again(flux2, body, lora)
    pipe = lora_pipe("Flux2KleinPipeline", builtin_path(models_dir, "tiny-flux2"),
                     builtin_path(models_dir, "tiny-lora-flux2"))
    want = with_lora(pipe, 0.75, "a hill", 21, **DEFAULTS, **SIZE)
    got = pixels(result(store, styled))
    assert close(got, want)
    assert np.abs(got - pixels(result(store, plain))).mean() > 0.5  # the adapter changed the image
    assert np.array_equal(pixels(result(store, again)), pixels(result(store, plain)))
    text = result(store, styled).info["parameters"]
    parsed = read_by_sd_parsers(text, tmp_path / "lora.png", Image.new("RGB", (8, 8)))
    assert parsed is not None and "<lora:tiny-lora-flux2:0.75>" in parsed.full_prompt


def test_the_flux2_adapter_is_refused_on_flux1(flux2):
    error = assert_refused(flux2, {"model": "builtin:tiny-flux", "prompts": ["x"],
                                   "params": {"loras": [{"name": "builtin:tiny-lora-flux2"}]}}, "params.loras[0].name")
    assert "flux2-klein" in error["message"]
