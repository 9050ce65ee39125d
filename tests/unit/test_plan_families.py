"""A job checked against its model's family at submit: defaults, refusals naming the field and the
value, and the memory need the job carries to the workers."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from producer.planning.jobs import plan_job, route
from producer.schemas import parse_submit
from sdq import families
from sdq.memory import load_cast
from sdq.modelinfo import BUILTIN_SIDES
from sdq.config import Settings
from sdq.records import Chunk, WorkerRecord
from workers.running.routing import Router
from tests.support.planning import plan as _plan, refused as _refused

SETTINGS = Settings.from_env({})
FAST = {"width": 64, "height": 64, "steps": 2}


def local_model(tmp_path: Path, class_name: str) -> tuple[str, Settings]:
    """An allowlisted local folder whose model_index.json names `class_name`."""
    folder = tmp_path / class_name
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return str(folder), Settings.from_env({"SDQ_MODELS": str(folder)})


def test_each_family_gets_its_own_defaults_recorded_in_the_job():
    sd, sdxl, sd3 = (_plan({"model": m, "prompts": ["a"]}) for m in
                     ("builtin:tiny-sd", "builtin:tiny-sdxl", "builtin:tiny-sd3"))
    assert (sd.job.params["scheduler"], sd.job.params["guidance_scale"], sd.job.params["width"]) == ("pndm", 7.5, 512)
    assert "max_sequence_length" not in sd.items[0].params and "crop_left" not in sd.items[0].params
    assert (sdxl.job.params["scheduler"], sdxl.job.params["guidance_scale"]) == ("euler", 5.0)
    assert (sd3.job.params["scheduler"], sd3.job.params["guidance_scale"]) == ("flow_euler", 7.0)
    assert sd3.items[0].params["max_sequence_length"] == 256
    # the tiny built-ins default to their own sample size, a real checkpoint of the family to 1024
    assert sdxl.items[0].params["width"] == BUILTIN_SIDES["builtin:tiny-sdxl"] == 256


def test_a_local_sdxl_folder_defaults_to_1024_and_carries_the_familys_memory_need(tmp_path):
    model, settings = local_model(tmp_path, "StableDiffusionXLPipeline")
    plan = _plan({"model": model, "prompts": ["a"]}, settings)
    assert (plan.items[0].params["width"], plan.items[0].params["height"]) == (1024, 1024)
    assert plan.job.requires["memory"] == families.FAMILIES["sdxl"].memory.record()
    chunk = route(plan, [])[0]
    assert chunk.requires["memory"] == plan.job.requires["memory"]


def test_explicit_values_win_over_the_familys_defaults():
    plan = _plan({"model": "builtin:tiny-sdxl", "prompts": ["a"],
                  "params": {**FAST, "scheduler": "dpmpp_2m", "guidance_scale": 9, "crop_left": 8}})
    assert plan.items[0].params["scheduler"] == "dpmpp_2m" and plan.items[0].params["guidance_scale"] == 9
    assert plan.items[0].params["crop_left"] == 8 and plan.items[0].params["width"] == 64


@pytest.mark.parametrize("body, field, words", [
    ({"model": "builtin:tiny-sd", "params": {"max_sequence_length": 77}}, "params.max_sequence_length",
     ["77", "Stable Diffusion 3.x", "builtin:tiny-sd"]),
    ({"model": "builtin:tiny-sd3", "params": {"crop_left": 16}}, "params.crop_left", ["16", "Stable Diffusion XL"]),
    ({"model": "builtin:tiny-sd3", "params": {"scheduler": "pndm"}}, "params.scheduler", ["'pndm'", "flow_euler"]),
    ({"model": "builtin:tiny-sdxl", "params": {"scheduler": "flow_euler"}}, "params.scheduler", ["'flow_euler'"]),
    ({"model": "builtin:tiny-sd3", "params": {"guidance_scale": 40}}, "params.guidance_scale", ["40", "30"]),
    ({"model": "builtin:tiny-sd3", "params": {"width": 72}}, "params.width", ["72", "multiple of 16"]),
    ({"model": "builtin:tiny-sd3", "params": {"max_sequence_length": 600}}, "params.max_sequence_length", ["600"]),
    ({"model": "builtin:tiny-sdxl", "params": {"width": 64, "crop_left": 64}}, "params.crop_left", ["64"]),
    ({"model": "builtin:tiny-sdxl", "items": [{"prompt": "a"}, {"prompt": "b", "max_sequence_length": 9}]},
     "items[1].max_sequence_length", ["9"]),
    ({"model": "builtin:tiny-sd3", "sweep": {"scheduler": ["flow_euler", "euler"]}}, "sweep.scheduler", ["'euler'"]),
])
def test_family_parameters_are_checked_with_the_bad_value_in_the_message(body, field, words):
    if "items" not in body:
        body = {"prompts": ["a"], **body}
    err = _refused(body)
    assert err.field == field and all(w in err.message for w in words), err.message


def test_a_pipeline_the_family_has_no_class_for_is_refused_naming_the_pipeline(tmp_path):
    model, settings = local_model(tmp_path, "StableDiffusion3Pipeline")
    err = _refused({"model": model, "prompts": ["a"], "pipeline": "depth2img", "params": {"init_image": "x"}},
                   settings)
    assert err.field == "pipeline" and "depth2img" in err.message and "txt2img" in err.message


def test_a_model_of_a_family_sdq_does_not_run_is_refused_naming_the_model(tmp_path):
    model, settings = local_model(tmp_path, "QwenImageLayeredPipeline")
    err = _refused({"model": model, "prompts": ["a"]}, settings)
    assert err.field == "model" and "Qwen-Image" in err.message


def test_a_local_model_of_a_class_the_table_does_not_know_goes_through_as_given(tmp_path):
    model, settings = local_model(tmp_path, "StableDiffusionPipelineSafe")  # a community SD variant
    plan = _plan({"model": model, "prompts": ["a"]}, settings)
    assert plan.job.params["scheduler"] == "pndm" and "memory" not in plan.job.requires


def test_a_model_of_unknown_family_goes_through_as_given():
    settings = Settings.from_env({"SDQ_MODELS": "someone/some-sdxl"})
    plan = _plan({"model": "someone/some-sdxl", "prompts": ["a"], "params": {"crop_left": 8}}, settings)
    assert plan.items[0].params["crop_left"] == 8 and "memory" not in plan.job.requires


def _router(memory_gb: float, dtype: str) -> Router:
    return Router("w1", memory_gb=memory_gb, dtype=dtype)


def test_a_worker_refuses_items_whose_family_needs_more_memory_than_it_has(tmp_path):
    model, settings = local_model(tmp_path, "StableDiffusionXLPipeline")
    plan = _plan({"model": model, "prompts": ["a"], "params": {"width": 1024, "height": 1024}}, settings)
    chunk = Chunk.of(plan.job, "sdq.any.any.p1024", plan.items)
    need = families.FAMILIES["sdxl"].memory.need_gb("fp16", 1024 * 1024)  # 10 GB
    assert "needs 10 GB" in _router(8, "fp16").refusal(chunk) and "8.0 GB" in _router(8, "fp16").refusal(chunk)
    assert _router(need, "fp16").refusal(chunk) is None
    assert "in fp32" in _router(need, "fp32").refusal(chunk)  # full precision needs twice as much
    # a smaller image needs less: the same 10 GB device takes 512x512 items in fp16
    small = _plan({"model": model, "prompts": ["a"], "params": {"width": 512, "height": 512}}, settings)
    assert _router(9, "fp16").refusal(Chunk.of(small.job, "q", small.items)) is None
    # the caller's min_memory_gb still counts when it is the larger need
    heavy = _plan({"model": model, "prompts": ["a"], "requires": {"min_memory_gb": 40}}, settings)
    assert "needs 40 GB" in _router(24, "fp16").refusal(Chunk.of(heavy.job, "q", heavy.items))


def test_the_producer_warns_when_no_live_worker_has_the_memory(tmp_path):
    model, settings = local_model(tmp_path, "StableDiffusion3Pipeline")
    plan = _plan({"model": model, "prompts": ["a"], "params": {"width": 512, "height": 512}}, settings)
    queue = route(plan, [])[0].queue
    small = WorkerRecord(name="w", queues=[queue], models=[model], memory_total_gb=12, dtype="fp16")
    big = replace(small, memory_total_gb=24)
    route(plan, [small])
    assert any("no live worker" in w for w in plan.warnings)
    plan.warnings.clear()
    route(plan, [big])
    assert plan.warnings == []


def test_a_bf16_cpu_worker_counts_the_weight_files_it_casts_at_load():
    # A CPU computing in bf16 reads fp32 files: while loading, its RAM holds the bf16 copies and the
    # UNet's fp32 file pages (measured: docs/MODELS.md), about twice what its 512x512 steps need.
    plan = _plan({"model": "builtin:sd15-shaped", "prompts": ["a"], "params": {"width": 512, "height": 512}})
    chunk = Chunk.of(plan.job, "q", plan.items)
    sd = families.FAMILIES["sd"].memory
    steps, load = sd.need_gb("bf16", 512 * 512), sd.need_gb("bf16", 512 * 512, "fp32")
    assert steps < 4 < 6 < load < 7
    assert Router("gpu", memory_gb=4, dtype="bf16").refusal(chunk) is None  # a GPU: the cast is in host RAM
    cpu = Router("cpu", memory_gb=4, dtype="bf16", cast_from=load_cast("cpu", "bf16"))
    assert f"needs {load:g} GB" in cpu.refusal(chunk) and "casts fp32 weight files" in cpu.refusal(chunk)
    assert Router("cpu", memory_gb=7, dtype="bf16", cast_from="fp32").refusal(chunk) is None
    # the producer's warning counts it the same way, from the worker's record
    queue = route(plan, [])[0].queue
    plan.warnings.clear()
    record = WorkerRecord(name="w", queues=[queue], models=["builtin:sd15-shaped"], memory_total_gb=4, dtype="bf16")
    route(plan, [replace(record, device="cuda:0")])
    assert plan.warnings == []
    route(plan, [replace(record, device="cpu")])
    assert any("no live worker" in w for w in plan.warnings)


def test_an_init_images_size_is_rounded_to_the_familys_multiple():
    record = {"key": "uploads/x.png", "width": 72, "height": 100, "owner": "alice"}
    req = parse_submit({"model": "builtin:tiny-sd3", "pipeline": "img2img", "prompts": ["a"],
                        "params": {"init_image": "uploads/x.png"}})
    plan = plan_job(req, SETTINGS, owner="alice", uploads=lambda key, field: record)
    assert (plan.items[0].params["width"], plan.items[0].params["height"]) == (64, 96)


@pytest.mark.parametrize("model", ["builtin:tiny-sd3"])
def test_inpaint_on_a_family_without_an_inpaint_class_is_refused_naming_the_pipeline(model):
    err = _refused({"model": model, "prompts": ["a"], "pipeline": "inpaint",
                    "params": {"init_image": "uploads/a.png", "mask_image": "uploads/b.png"}})
    assert err.field == "pipeline" and "'inpaint'" in err.message and model in err.message
