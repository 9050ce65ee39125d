"""Submit checks added by issue 39: nothing a worker must refuse or fail on later is accepted."""
from __future__ import annotations

import pytest

from producer.planning.jobs import plan_job
from producer.schemas import parse_submit
from sdq import defaults
from sdq.config import Settings
from sdq.exceptions import InvalidInput

SETTINGS = Settings.from_env({})


def _upload(key: str, field: str) -> dict:
    return {"key": key, "width": 64, "height": 64, "owner": "alice"}


def _plan(body: dict):
    return plan_job(parse_submit(body), SETTINGS, "alice", uploads=_upload)


IMG2IMG = {"pipeline": "img2img", "params": {"init_image": "uploads/x.png", "steps": 3}}


@pytest.mark.parametrize("body, field, words", [
    ({**IMG2IMG, "params": {**IMG2IMG["params"], "strength": 0.2}}, "params.strength", "0 denoising steps"),
    ({**IMG2IMG, "items": [{"prompt": "a", "strength": 0.3}], "prompts": None}, "items[0].strength", "3 x 0.3"),
    ({**IMG2IMG, "sweep": {"strength": [0.5, 0.1]}}, "sweep.strength", "0 denoising steps"),
    ({"params": {"width": 64, "height": 64, "steps": 3, "hires": {"strength": 0.2}}}, "params.hires.strength",
     "0 denoising steps"),
    ({"params": {"width": 64, "height": 64, "steps": 30, "hires": {"strength": 0.5, "steps": 1}}},
     "params.hires.strength", "1 x 0.5"),
])
def test_zero_denoising_steps_are_a_422_naming_the_field(body, field, words):
    """Issue 39 defect 10: `steps * strength` < 1 ran no step and failed on the worker."""
    body = {"prompts": ["a"], **body}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(InvalidInput) as err:
        _plan(body)
    assert (err.value.field, err.value.status) == (field, 422), err.value.message
    assert words in err.value.message


def test_one_denoising_step_is_enough():
    plan = _plan({"prompts": ["a"], **{**IMG2IMG, "params": {**IMG2IMG["params"], "strength": 0.34}}})
    assert plan.items[0].params["strength"] == 0.34
    _plan({"prompts": ["a"], "params": {"width": 64, "height": 64, "steps": 2, "hires": {"strength": 0.5}}})


def test_txt2img_ignores_strength():
    _plan({"prompts": ["a"], "params": {"width": 64, "height": 64, "steps": 3, "strength": 0.1}})


def test_a_memory_requirement_no_worker_could_have_is_a_422():
    """Issue 39 defect 4: an unbounded `requires.min_memory_gb` was passed on between workers for ever."""
    with pytest.raises(InvalidInput) as err:
        parse_submit({"prompts": ["a"], "requires": {"min_memory_gb": defaults.MAX_DEVICE_MEMORY_GB + 1}})
    assert err.value.field == "requires.min_memory_gb" and str(defaults.MAX_DEVICE_MEMORY_GB) in err.value.message
    assert parse_submit({"prompts": ["a"], "requires": {"min_memory_gb": 80}}).requires.min_memory_gb == 80


@pytest.mark.parametrize("sweep, field", [({"width": [64, 80]}, "sweep.width"), ({"height": [80, 64]}, "sweep.height")])
def test_sweep_cells_are_checked_against_the_hires_size_rule(sweep, field):
    """Issue 39 defect 10: a cell's width x the hires scale that breaks the family's size rule (SD3: multiples of
    16; 80 x 1.5 = 120) was accepted and failed on the worker."""
    body = {"model": "builtin:tiny-sd3", "prompts": ["a"], "sweep": sweep,
            "params": {"width": 64, "height": 64, "steps": 2, "hires": {"scale": 1.5}}}
    with pytest.raises(InvalidInput) as err:
        _plan(body)
    assert (err.value.field, err.value.status) == (field, 422), err.value.message
    words = ("120", "80", "params.hires.scale=1.5", "multiple of 16")
    assert all(w in err.value.message for w in words), err.value.message
    ok = _plan({**body, "sweep": {"width": [64, 96]}})  # 96 x 1.5 = 144: a multiple of 16
    assert [it.size for it in ok.items] == [[96, 96], [144, 96]]
