"""The request option table (`sdq.options`) and its worker hooks (`workers.options`): every row has a
hook, each stage iterates them, and a hook's `undo` runs when a later option fails to apply."""
from __future__ import annotations

import pytest

from producer.schemas import OPTION_KEYS, Params
from sdq import options, pipelines
from sdq.options.base import OptionSpec
from workers import options as worker_options
from workers.options.base import OptionHook


def test_every_row_has_its_worker_hook_and_its_schema():
    assert list(worker_options.HOOKS) == list(options.OPTIONS)
    assert OPTION_KEYS == tuple(options.OPTIONS)
    for name, option in options.OPTIONS.items():
        assert option.name == name and option.title and option.schema_name and option.fields
        assert set(option.pipelines) <= set(pipelines.SPECS), name
        assert name in Params.model_fields


def test_the_openapi_names_each_options_object():
    schema = Params.model_json_schema()
    assert {o.schema_name for o in options.OPTIONS.values()} <= set(schema["$defs"])


def test_counting_iterates_the_rows_passes():
    params = {"steps": 10, "width": 64, "height": 64}
    assert options.passes("txt2img", params) == [options.Pass(10, 64, 64)]
    assert options.final_size("upscale", params) == (256, 256)


class _Recording(OptionHook):
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    def apply(self, cache, pipe, entry, value):
        if self.fail:
            raise RuntimeError(f"{self.name} does not fit")
        self.log.append(f"on {self.name}")
        return value

    def undo(self, cache, pipe, entry, value):
        self.log.append(f"off {self.name}")


class _Row(OptionSpec):
    def __init__(self, name: str) -> None:
        self.name = name


def test_a_failing_apply_undoes_the_options_already_on(monkeypatch):
    log: list[str] = []
    monkeypatch.setattr(options, "OPTIONS", {"a": _Row("a"), "b": _Row("b")})
    monkeypatch.setattr(worker_options, "HOOKS", {"a": _Recording("a", log), "b": _Recording("b", log, fail=True)})
    with pytest.raises(RuntimeError, match="b does not fit"):
        worker_options.apply(None, None, None, {"a": 1, "b": 2})
    assert log == ["on a", "off a"]
    log.clear()
    monkeypatch.setattr(worker_options, "HOOKS", {"a": _Recording("a", log), "b": _Recording("b", log)})
    assert worker_options.apply(None, None, None, {"a": 1, "b": 2, "c": 3}) == {"a": 1, "b": 2}
    worker_options.undo(None, None, None, {"a": 1, "b": 2})
    assert log == ["on a", "on b", "off b", "off a"]
    assert worker_options.apply(None, None, None, {"a": None, "b": []}) == {}  # not asked for: not applied


def test_the_web_form_renders_a_fieldset_per_row():
    from producer import form

    page = form.render(f"<form>{form.PLACEHOLDER}</form>")
    for name, option in options.OPTIONS.items():
        assert f'data-option="{name}" data-pipelines="{" ".join(option.pipelines)}"' in page
        for f in option.form:
            assert f">{f.label}</label>" in page
            assert f'data-field="params.{name}' in page
    assert form.PLACEHOLDER not in page


def test_a_row_without_its_own_check_is_refused_on_other_pipelines():
    from sdq.exceptions import InvalidInput

    row = _Row("later")
    row.title, row.pipelines = "a later option", ("txt2img",)
    ctx = options.Submit(pipelines.spec("upscale"), "builtin:tiny-upscaler", None, ())
    with pytest.raises(InvalidInput) as err:
        row.check({"on": True}, ctx)
    assert err.value.field == "params.later" and "'upscale'" in err.value.message and "txt2img" in err.value.message
    assert row.check({"on": True}, options.Submit(pipelines.spec("txt2img"), "builtin:tiny-sd", None, ())) == {"on": True}


class _Defaulting(OptionHook):
    def __init__(self, name: str, families: dict) -> None:
        self.name, self.families = name, families

    def default(self, family):
        return self.families.get(family)


def test_operator_defaults_fill_only_what_a_job_leaves_out(monkeypatch):
    from sdq.records import Chunk

    monkeypatch.setattr(worker_options, "HOOKS", {"a": _Defaulting("a", {"flux": {"on": 1}}), "b": OptionHook()})
    chunk = Chunk(job="j", model="builtin:tiny-flux", pipeline="txt2img", params={"steps": 2}, items=[])
    assert worker_options.with_defaults(chunk).params == {"steps": 2, "a": {"on": 1}}
    given = Chunk(job="j", model="builtin:tiny-flux", pipeline="txt2img", params={"a": {"on": 2}}, items=[])
    assert worker_options.with_defaults(given) is given  # the job's own value stays
    other = Chunk(job="j", model="builtin:tiny-sd", pipeline="txt2img", params={}, items=[])
    assert worker_options.with_defaults(other) is other  # no default for that family


def test_the_option_default_flag_and_env_name_known_options():
    from cli.main import option_defaults
    from sdq.exceptions import InvalidInput

    name = next(iter(options.OPTIONS))
    assert option_defaults([f'{name}=[1]'], json_env := '{"%s": [0]}' % name) == {name: [1]}
    assert option_defaults([], json_env) == {name: [0]}
    with pytest.raises(InvalidInput, match="not a request option"):
        option_defaults(["nope={}"], None)
    with pytest.raises(InvalidInput, match="must be JSON"):
        option_defaults([f"{name}=x"], None)
