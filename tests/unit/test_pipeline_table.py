"""The pipeline table (`sdq.pipelines`) is the one place that knows pipelines by name."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sdq import pipelines
from sdq.exceptions import InvalidInput

ROOT = Path(__file__).resolve().parents[2]


def _names_in(node: ast.AST) -> set[str]:
    """Pipeline names written as constants in a comparison operand (also inside a tuple/list/set)."""
    if isinstance(node, ast.Constant) and node.value in pipelines.SPECS:
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_names_in(e) for e in node.elts)) if node.elts else set()
    return set()


def test_no_module_outside_the_table_compares_pipeline_names():
    offenders = []
    for pkg in ("sdq", "producer", "workers", "storage"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path == ROOT / "sdq" / "pipelines.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Compare) and any(_names_in(n) for n in (node.left, *node.comparators)):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_output_size_and_work_come_from_the_spec():
    params = {"steps": 20, "strength": 0.5, "width": 64, "height": 32}
    assert pipelines.spec("upscale").output_size(64, 32) == (256, 128)
    assert pipelines.spec("txt2img").output_size(64, 32) == (64, 32)
    assert pipelines.spec("img2img").first_loop(params) == 10
    assert pipelines.spec("txt2img").first_loop(params) == 20
    assert pipelines.spec("upscale").input_size(params) == "64x32"
    assert pipelines.spec("img2img").input_size(params) is None


def test_unknown_pipeline_names_the_known_ones():
    with pytest.raises(ValueError, match="txt2img, img2img"):
        pipelines.spec("nope")


@pytest.mark.parametrize("param", list(pipelines.all_params().values()), ids=lambda p: p.name)
def test_every_pipeline_parameter_is_checked_at_submit_with_its_range(param):
    from producer.schemas import parse_submit

    parse_submit({"prompts": ["x"], "params": {param.name: param.default}})
    with pytest.raises(InvalidInput) as err:
        parse_submit({"prompts": ["x"], "params": {param.name: param.high + 1}})
    assert err.value.field == f"params.{param.name}"


@pytest.mark.parametrize("param", [p for p in pipelines.all_params().values() if p.infotext], ids=lambda p: p.name)
def test_every_parameter_infotext_writes_is_read_back(param):
    from sdq.infotext import params_from_infotext

    value = param.default if param.default is not None else param.kind(param.low)  # None: unset, not written
    assert params_from_infotext({param.infotext: str(value)})[param.name] == value


@pytest.mark.parametrize("image", list(pipelines.all_images().values()), ids=lambda i: i.field)
def test_every_image_input_is_a_request_field_job_wide_and_per_item(image):
    from producer.schemas import parse_submit

    req = parse_submit({"items": [{"prompt": "x", image.field: "uploads/a.png"}],
                        "params": {image.field: "uploads/b.png"}})
    assert getattr(req.items[0], image.field) == "uploads/a.png"
    assert getattr(req.params, image.field) == "uploads/b.png"


def test_schedulers_have_one_table():
    from sdq import contract
    from sdq.infotext import SCHEDULER_OF_SAMPLER

    assert contract.SCHEDULERS == tuple(pipelines.SCHEDULERS)
    assert {SCHEDULER_OF_SAMPLER[s.sampler] for s in pipelines.SCHEDULERS.values()} == set(pipelines.SCHEDULERS)


def test_a_builtin_serves_the_pipelines_its_family_has_a_class_for():
    from sdq.models import BUILTIN_MODELS

    assert BUILTIN_MODELS["builtin:tiny-upscaler"] == ("upscale",)
    assert BUILTIN_MODELS["builtin:tiny-depth"] == ("depth2img",)
    assert {"txt2img", "img2img"} <= set(BUILTIN_MODELS["builtin:tiny-sd"])
    assert pipelines.family_of_class("StableDiffusionPipeline") == pipelines.SD
