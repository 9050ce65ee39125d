"""Flux.2 dev (`Flux2Pipeline`) through the real queue on `builtin:tiny-flux2-dev`: txt2img and edit (the
reference-image input) each equal a direct diffusers Flux2Pipeline call with the same seed and the family's
defaults; the prompt and the distilled guidance reach the model; the infotext is read by sd-parsers, `sdq inspect`
gives the body that makes the same image again; requests dev cannot take (Klein's inpaint, img2img, guidance out of
range, a negative prompt, Flux.1's true CFG) are refused at submit naming the field."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pytest

from cli.client import Client
from sdq import families
from sdq.infotext import parse_infotext, submit_body_from_infotext
from sdq.modelinfo import is_distilled
from sdq.sources import builtin_path
from tests.support import families as shared
from tests.support.families import (SIZE, assert_equals_direct, assert_recorded, assert_refused, digests, generate,
                                     job_inputs, one_worker, read_by_sd_parsers, remade)
from tests.test_pipelines import close, pixels, result

MODEL = "builtin:tiny-flux2-dev"

DEFAULTS = {"guidance_scale": 4.0, "max_sequence_length": 256}
"""What the producer fills in for a Flux.2 dev model (the direct call passes the same)."""

run = partial(shared.run, timeout=300)


@pytest.fixture(scope="module")
def dev(stack_factory) -> Client:
    st = one_worker(stack_factory, "flux2dev", "w-flux2dev")
    return Client(st.env["SDQ_SERVER"])


@lru_cache(maxsize=None)
def _pipe(models_dir: Path):
    import diffusers
    import torch

    pipe = diffusers.Flux2Pipeline.from_pretrained(builtin_path(models_dir, "tiny-flux2-dev"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def direct(models_dir: Path, prompt: str, seed: int, steps: int = 3, **kw) -> np.ndarray:
    """The image plain diffusers' Flux2Pipeline makes with the model's own scheduler (one thread, like the worker)."""
    return generate(_pipe(models_dir), prompt, seed, steps, **kw)


def test_the_builtin_is_generated_the_same_every_time_and_read_as_dev(tmp_path, models_dir):
    from workers.builtins.registry import BUILDERS

    BUILDERS["tiny-flux2-dev"](tmp_path / "dev")
    built = builtin_path(models_dir, "tiny-flux2-dev")
    assert digests(tmp_path / "dev") == digests(built)
    assert families.detect(built) == families.FLUX2  # model_index.json names Flux2Pipeline
    assert not is_distilled(built, families.FLUX2)


def test_the_prompt_path_is_mistral3s_chat_template_read_at_three_layers(models_dir):
    """The text encoder is a real Mistral3ForConditionalGeneration; the tokenizer writes Mistral's chat format
    around the system message and the prompt; the three stacked layers make the transformer's text width."""
    pipe = _pipe(models_dir)
    assert type(pipe.text_encoder).__name__ == "Mistral3ForConditionalGeneration"
    assert pipe.text_encoder.config.text_config.num_hidden_layers > 30  # layer 30 is an intermediate one
    messages = [[{"role": "system", "content": [{"type": "text", "text": "S"}]},
                 {"role": "user", "content": [{"type": "text", "text": "a dog"}]}]]
    ids = pipe.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"][0]
    assert pipe.tokenizer.decode(ids) == "<s>[SYSTEM_PROMPT]S[/SYSTEM_PROMPT][INST]a dog[/INST]"
    embeds, _ = pipe.encode_prompt("a dog", max_sequence_length=256)
    assert embeds.shape == (1, 256, pipe.transformer.config.joint_attention_dim)


@pytest.mark.parametrize("task", ["txt2img", "edit"])
def test_each_pipeline_through_the_queue_equals_direct_diffusers(dev, store, models_dir, task):
    params, kw = job_inputs(dev, task, DEFAULTS)
    prompt = "make the sky red" if task == "edit" else "a red lighthouse"
    doc = run(dev, {"model": MODEL, "pipeline": task, "prompts": [prompt], "params": params})
    img = assert_equals_direct(store, doc, lambda seed: direct(models_dir, prompt, seed, **kw))
    assert_recorded(doc, img, MODEL, task, 4.0)
    assert not close(pixels(img), direct(models_dir, "a blue boat", 31, **kw))  # the prompt reached the model
    if task == "edit":  # the reference image counts: without it the same call makes another image
        without = direct(models_dir, prompt, 31, **{k: v for k, v in kw.items() if k != "image"})
        assert not close(pixels(img), without)


def test_the_infotext_is_read_by_sd_parsers_and_makes_the_same_image_again(dev, store, models_dir, tmp_path):
    body = {"model": MODEL, "prompts": ["a castle"],
            "params": {"steps": 3, "seed": 5, **SIZE, "guidance_scale": 2.5}}
    img = result(store, run(dev, body)["items"][0])
    assert close(pixels(img), direct(models_dir, "a castle", 5, guidance_scale=2.5, max_sequence_length=256, **SIZE))
    assert not close(pixels(img), direct(models_dir, "a castle", 5, **DEFAULTS, **SIZE))  # the guidance counts
    text = img.info["parameters"]
    info = parse_infotext(text)
    assert (info["CFG scale"], info["Max sequence length"], info["Steps"], info["Model"]) == ("2.5", "256", "3", MODEL)
    saved = tmp_path / "flux2dev.png"
    parsed = read_by_sd_parsers(text, saved, img)
    assert parsed is not None and "a castle" in parsed.full_prompt
    assert parsed.samplers[0].parameters["seed"] == "5" and parsed.samplers[0].parameters["cfg_scale"] == "2.5"
    out = subprocess.run([sys.executable, "-m", "cli", "inspect", "--json", str(saved)], capture_output=True,
                         text=True, timeout=60, env={**os.environ})
    assert out.returncode == 0, out.stderr
    again = json.loads(out.stdout)["resubmit"]
    assert again == submit_body_from_infotext(info)
    assert again["model"] == MODEL and again["params"]["guidance_scale"] == 2.5
    assert np.array_equal(remade(dev, store, again), pixels(img))


@pytest.mark.parametrize("pipeline, params, field", [
    ("inpaint", {"init_image": "uploads/x.png", "mask_image": "uploads/m.png"}, "pipeline"),  # Klein only
    ("img2img", {"init_image": "uploads/x.png"}, "pipeline"),
    ("txt2img", {"guidance_scale": 31.0}, "params.guidance_scale"),
    ("txt2img", {"guidance_scale": -1.0}, "params.guidance_scale"),
    ("txt2img", {"negative_prompt": "fog"}, "params.negative_prompt"),
    ("txt2img", {"true_cfg_scale": 4.0}, "params.true_cfg_scale"),
    ("txt2img", {"width": 72}, "params.width"),
    ("txt2img", {"max_sequence_length": 600}, "params.max_sequence_length"),
])
def test_bad_flux2_dev_requests_are_refused_naming_the_field(dev, pipeline, params, field):
    assert_refused(dev, {"model": MODEL, "pipeline": pipeline, "prompts": ["x"], "params": params}, field)
