"""A1111 infotext: written by the worker, read back into a submit body."""
from __future__ import annotations

import pytest

from sdq import contract
from sdq.infotext import format_infotext, parse_infotext, params_from_infotext, submit_body_from_infotext


def test_round_trip_gives_back_the_submit_parameters():
    text = format_infotext("a fox, in snow: at dusk", "blurry", {
        "Steps": 4, "Sampler": "Euler a", "CFG scale": 7.5, "Seed": 42, "Size": "64x64",
        "Model": "builtin:tiny-sd", "Pipeline": "txt2img", "Denoising strength": None, "Watermark": ""})
    info = parse_infotext(text)
    assert info["prompt"] == "a fox, in snow: at dusk" and info["negative_prompt"] == "blurry"
    assert "Denoising strength" not in info and "Watermark" not in info
    body = submit_body_from_infotext(info)
    assert body == {"prompts": ["a fox, in snow: at dusk"], "model": "builtin:tiny-sd", "pipeline": "txt2img",
                    "params": {"steps": 4, "guidance_scale": 7.5, "seed": 42, "width": 64, "height": 64,
                               "scheduler": "euler_a", "negative_prompt": "blurry", "watermark": False}}


def test_values_with_commas_quotes_and_colons_survive():
    text = format_infotext("p", "", {"Model": 'a, "b": c', "Steps": 2})
    assert parse_infotext(text)["Model"] == 'a, "b": c'


def test_upscale_input_size_is_the_submit_size():
    info = parse_infotext(format_infotext("p", "", {"Size": "256x256", "Input size": "64x64", "Noise level": 20}))
    assert params_from_infotext(info)["width"] == 64 and params_from_infotext(info)["noise_level"] == 20


@pytest.mark.parametrize("scheduler", contract.SCHEDULERS)
def test_every_scheduler_round_trips_through_its_sampler_name(scheduler):
    from sdq.infotext import SAMPLER_NAMES

    info = parse_infotext(format_infotext("p", "", {"Sampler": SAMPLER_NAMES[scheduler], "Steps": 3}))
    assert params_from_infotext(info)["scheduler"] == scheduler


def test_prompt_only_text_has_no_fields():
    assert parse_infotext("just a prompt") == {"prompt": "just a prompt", "negative_prompt": ""}
