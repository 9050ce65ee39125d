"""Sweep checks and expansion."""
from __future__ import annotations

import pytest

from producer.planning.sweep import check_sweep, combinations, count
from sdq.exceptions import InvalidInput


def test_combinations_are_in_product_order_last_key_fastest():
    sweep = check_sweep({"guidance_scale": [5, 9], "scheduler": ["ddim", "euler"]})
    assert combinations(sweep) == [
        {"guidance_scale": 5.0, "scheduler": "ddim"}, {"guidance_scale": 5.0, "scheduler": "euler"},
        {"guidance_scale": 9.0, "scheduler": "ddim"}, {"guidance_scale": 9.0, "scheduler": "euler"}]
    assert count(sweep) == 4


def test_no_sweep_is_one_empty_combination():
    assert check_sweep(None) == {}
    assert combinations({}) == [{}] and count({}) == 1


def test_count_does_not_expand():
    sweep = {f"k{i}": list(range(64)) for i in range(8)}
    assert count(sweep) == 64 ** 8


@pytest.mark.parametrize("sweep, field, words", [
    ({"model": ["a", "b"]}, "sweep.model", "cannot sweep"),
    ({"steps": []}, "sweep.steps", "non-empty list"),
    ({"steps": 5}, "sweep.steps", "non-empty list"),
    ({"steps": [5, 5]}, "sweep.steps", "twice"),
    ({"steps": [0]}, "sweep.steps", "got 0"),
    ({"steps": [True]}, "sweep.steps", "True"),
    ({"width": [100]}, "sweep.width", "multiple of 8"),
    ({"scheduler": ["nope"]}, "sweep.scheduler", "nope"),
    ({"seed": [-1]}, "sweep.seed", "-1"),
    ({"seed": [[1]]}, "sweep.seed", "scalars"),
    ({"negative_prompt": [3]}, "sweep.negative_prompt", "3"),
    ({"steps": list(range(1, 66))}, "sweep.steps", "at most 64"),
])
def test_bad_sweeps_name_the_key_and_the_value(sweep, field, words):
    with pytest.raises(InvalidInput) as err:
        check_sweep(sweep)
    assert err.value.field == field and words in err.value.message


def test_values_are_normalized_by_the_schema():
    assert check_sweep({"guidance_scale": [5, "7.5"]}) == {"guidance_scale": [5.0, 7.5]}
