"""Submit body validation: the first bad field is named, with its value."""
from __future__ import annotations

import pytest

from producer.schemas import SubmitRequest, parse_submit
from sdq.exceptions import InvalidInput


def test_a_minimal_body_gets_the_defaults():
    req = parse_submit({"prompts": ["a cat"]})
    assert isinstance(req, SubmitRequest)
    assert (req.model, req.pipeline, req.priority, req.requires.device) == ("builtin:tiny-sd", "txt2img", 5, "any")


@pytest.mark.parametrize("body, field, words, status", [
    ([], "body", "JSON object", 400),
    ({"prompts": ["a"], "colour": 1}, "colour", "unknown field", 422),
    ({"prompts": []}, "prompts", "non-empty", 422),
    ({"prompts": ["a"], "items": [{"prompt": "b"}]}, "prompts", "not both", 422),
    ({"prompts": ["a", " "]}, "prompts", "prompt 1 is empty", 422),
    ({"prompts": ["a"], "pipeline": "video"}, "pipeline", "'video'", 422),
    ({"prompts": ["a"], "params": {"width": 100}}, "params.width", "100", 422),
    ({"prompts": ["a"], "params": {"steps": 0}}, "params.steps", "0", 422),
    ({"prompts": ["a"], "params": {"scheduler": "x"}}, "params.scheduler", "'x'", 422),
    ({"items": [{"prompt": "a", "height": 4096}]}, "items[0].height", "4096", 422),
    ({"prompts": ["a"], "requires": {"device": "tpu"}}, "requires.device", "'tpu'", 422),
    ({"prompts": ["a"], "requires": {"dtype": "int8"}}, "requires.dtype", "'int8'", 422),
    ({"prompts": ["a"], "priority": 10}, "priority", "10", 422),
])
def test_bad_bodies_name_the_field_and_value(body, field, words, status):
    with pytest.raises(InvalidInput) as err:
        parse_submit(body)
    assert (err.value.field, err.value.status) == (field, status)
    assert words in err.value.message
    assert err.value.to_json()["error"]["field"] == field


@pytest.mark.parametrize("body, field", [
    ({"": {"\b": None}}, 'body[""]'),
    ({"prompts": ["a"], "params": {"a\x01": 1}}, "params"),
    ({"prompts": ["a\x02"]}, "prompts[0]"),
    ({"prompts": ["a"], "params": {"x-y": "\x03"}}, 'params["x-y"]'),
])
def test_a_control_character_names_a_nonempty_field(body, field):
    from producer.bodies import check_strings

    with pytest.raises(InvalidInput) as err:
        check_strings(body)
    assert err.value.field == field


@pytest.mark.parametrize("body, field", [
    ({"prompts": ["a"], "": 1}, 'body[""]'),
    ({"prompts": ["a"], "a b": 1}, 'body["a b"]'),
    ({"prompts": ["a"], "params": {"": 1}}, 'params[""]'),
])
def test_an_unknown_odd_key_is_named_quoted(body, field):
    with pytest.raises(InvalidInput) as err:
        parse_submit(body)
    assert err.value.field == field and "unknown field" in str(err.value)
