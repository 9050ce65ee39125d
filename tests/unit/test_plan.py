"""Expanding a submit request into items (nothing written, no services)."""
from __future__ import annotations

import pytest

from producer.planning.jobs import plan_job
from producer.schemas import parse_submit
from sdq.config import Settings
from sdq.exceptions import InvalidInput

SETTINGS = Settings.from_env({})


def _plan(body: dict, settings: Settings = SETTINGS):
    return plan_job(parse_submit(body), settings, owner="alice")


def test_defaults_are_recorded_in_the_job_and_items():
    plan = _plan({"prompts": ["a", "b"], "params": {"seed": 7}})
    assert plan.job.params["steps"] == 20 and plan.job.params["scheduler"] == "pndm"
    assert [it.seed for it in plan.items] == [7, 8]
    assert plan.items[0].params == {"steps": 20, "guidance_scale": 7.5, "width": 512, "height": 512,
                                       "scheduler": "pndm", "strength": 0.8, "noise_level": 20}


def test_item_overrides_win_over_job_params():
    plan = _plan({"items": [{"prompt": "a", "steps": 3}, {"prompt": "b"}], "params": {"steps": 5, "seed": 1}})
    assert [it.params["steps"] for it in plan.items] == [3, 5]


def test_sweep_cells_of_one_prompt_share_a_seed():
    plan = _plan({"prompts": ["a", "b"], "params": {"seed": 10, "width": 64, "height": 64},
                  "sweep": {"guidance_scale": [5, 9], "steps": [2, 3]}})
    assert len(plan.items) == 8
    assert {it.seed for it in plan.items[:4]} == {10} and {it.seed for it in plan.items[4:]} == {11}
    assert [it.sweep for it in plan.items[:2]] == [{"guidance_scale": 5.0, "steps": 2},
                                                      {"guidance_scale": 5.0, "steps": 3}]
    assert plan.items[1].params["steps"] == 3


def test_upscale_defaults_to_a_small_input():
    plan = _plan({"prompts": ["a"], "pipeline": "upscale", "model": "builtin:tiny-upscaler",
                  "params": {"init_image": "uploads/x.png"}})
    assert (plan.items[0].params["width"], plan.items[0].params["height"]) == (128, 128)


@pytest.mark.parametrize("body, field", [
    ({"prompts": ["a"] * 11}, "prompts"),
    ({"prompts": ["a"], "sweep": {"steps": [1, 2, 3, 4, 5, 6]}, "params": {"images_per_prompt": 2}}, "sweep"),
    ({"prompts": ["a"], "params": {"width": 2048, "height": 2048}}, "params.width"),
    ({"prompts": ["a"], "pipeline": "img2img"}, "params.init_image"),
    ({"prompts": ["a"], "params": {"init_image": "uploads/x.png"}}, "params.init_image"),
    ({"prompts": ["a"], "model": "builtin:tiny-upscaler"}, "pipeline"),
    ({"prompts": ["a"], "params": {"watermark": True, "width": 64, "height": 64}}, "params.watermark"),
])
def test_limits_are_checked_before_anything_is_written(body, field):
    with pytest.raises(InvalidInput) as err:
        _plan(body, Settings.from_env({"SDQ_MAX_ITEMS": "10"}))
    assert err.value.field == field
