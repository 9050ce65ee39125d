"""The video families, torch-free: Wan and LTX-Video recognised from model_index.json, their pipeline rows and
call arguments, the defaults and refusals a video job gets at submit, its work and memory counted per frame."""
from __future__ import annotations

import pytest

from sdq import families, models, options, pipelines, videos
from sdq.config import Settings
from sdq.families import LTX, WAN
from sdq.modelinfo import model_info
from sdq.scheduling import speed
from tests.unit.test_families import folder
from tests.support.planning import plan as _plan, refused as _refused


@pytest.mark.parametrize("class_name, family", [("WanPipeline", WAN), ("WanImageToVideoPipeline", WAN),
                                                ("LTXPipeline", LTX), ("LTXImageToVideoPipeline", LTX)])
def test_a_folders_model_index_reads_as_its_video_family(tmp_path, class_name, family):
    assert families.detect(folder(tmp_path, class_name)) == family
    assert families.unsupported(class_name) is None


def test_the_pipeline_table_has_video_rows_only_for_the_video_families():
    assert pipelines.pipelines_for(WAN) == pipelines.pipelines_for(LTX) == ("txt2video", "img2video")
    assert pipelines.spec("img2video").needs_image and not pipelines.spec("txt2video").needs_image
    assert pipelines.spec("txt2video").class_for(families.SD) is None
    assert pipelines.spec("txt2video").video and not pipelines.spec("txt2img").video
    assert pipelines.base_class(WAN) == "WanPipeline" and pipelines.base_class(LTX) == "LTXPipeline"
    p = {"width": 64, "height": 48, "frames": 9, "fps": 12.0}
    assert pipelines.family_kwargs(WAN, p) == {"num_frames": 9, "output_type": "np"}
    assert pipelines.family_kwargs(LTX, p) == {"num_frames": 9, "output_type": "np", "frame_rate": 12.0}


def test_the_builtins_are_video_models_with_small_defaults():
    assert model_info("builtin:tiny-wan").family.name == WAN
    assert model_info("builtin:tiny-wan-i2v").family.name == WAN
    assert model_info("builtin:tiny-ltx").family.name == LTX


@pytest.mark.parametrize("class_name, want", [
    ("WanPipeline", (832, 480, 81, 16, 50, "unipc", 5.0)),
    ("LTXPipeline", (704, 512, 161, 25, 50, "flow_euler", 3.0)),
])
def test_a_local_video_model_gets_its_familys_published_defaults(tmp_path, class_name, want):
    model = folder(tmp_path, class_name)
    settings = Settings.from_env({"SDQ_MODELS": str(model)})
    p = _plan({"model": str(model), "pipeline": "txt2video", "prompts": ["a"]}, settings).items[0].params
    assert (p["width"], p["height"], p["frames"], p["fps"], p["steps"], p["scheduler"], p["guidance_scale"]) == want


def test_a_tiny_builtin_defaults_to_a_short_square_clip():
    p = _plan({"model": "builtin:tiny-wan", "pipeline": "txt2video", "prompts": ["a"]}).items[0].params
    assert (p["width"], p["height"], p["frames"], p["fps"]) == (64, 64, 5, 16)
    p = _plan({"model": "builtin:tiny-ltx", "pipeline": "txt2video", "prompts": ["a"]}).items[0].params
    assert (p["width"], p["height"], p["frames"], p["fps"]) == (64, 64, 9, 25)


@pytest.mark.parametrize("model, params, field, value", [
    ("builtin:tiny-wan", {"frames": 8}, "params.frames", "8"),
    ("builtin:tiny-ltx", {"frames": 13}, "params.frames", "13"),
    ("builtin:tiny-ltx", {"frames": 265}, "params.frames", "265"),
    ("builtin:tiny-wan", {"fps": 0.5}, "params.fps", "0.5"),
    ("builtin:tiny-wan", {"width": 1600}, "params.width", "1600"),
    ("builtin:tiny-ltx", {"height": 80}, "params.height", "80"),
    ("builtin:tiny-wan", {"scheduler": "euler"}, "params.scheduler", "euler"),
    ("builtin:tiny-sd", {"fps": 8}, "params.fps", "8"),
])
def test_bad_video_parameters_are_refused_naming_the_field_and_value(model, params, field, value):
    pipeline = "txt2img" if model == "builtin:tiny-sd" else "txt2video"
    err = _refused({"model": model, "pipeline": pipeline, "prompts": ["a"], "params": params})
    assert err.field == field and value in err.message, (err.field, err.message)


def test_a_sweep_over_frames_is_checked_per_cell():
    err = _refused({"model": "builtin:tiny-wan", "pipeline": "txt2video", "prompts": ["a"],
                    "sweep": {"frames": [5, 6]}})
    assert err.field == "sweep.frames" and "6" in err.message


def test_work_and_memory_grow_with_the_frames():
    base = {"width": 64, "height": 64, "steps": 10, "frames": 1}
    one = speed.item_work("txt2video", base)
    assert speed.item_work("txt2video", {**base, "frames": 81}) == pytest.approx(81 * one)
    assert options.work("txt2img", {"width": 64, "height": 64, "steps": 10}) == pytest.approx(one)
    short = _plan({"model": "builtin:tiny-wan", "pipeline": "txt2video", "prompts": ["a"], "params": {"frames": 5}})
    long = _plan({"model": "builtin:tiny-wan", "pipeline": "txt2video",
                  "items": [{"prompt": "a"}, {"prompt": "b", "frames": 81}]})
    assert long.job.requires["memory"]["gb_per_mpx"] == pytest.approx(81 / 5 * short.job.requires["memory"]["gb_per_mpx"])
    image = _plan({"model": "builtin:tiny-sd", "prompts": ["a"]})
    assert image.job.requires["memory"]["gb_per_mpx"] == 0.5  # images: unchanged


def test_a_full_size_wan_clip_needs_a_large_gpu():
    """Wan 2.1 14B at its default 832x480x81 in bf16: over 40 GB (estimated, not measured)."""
    mem = families.FAMILIES[WAN].memory
    need = mem.weights_gb + mem.gb_per_mpx * 81 * 832 * 480 / 2**20
    assert 40 < need < 80
    assert videos.frames_of({"frames": 81}) == 81 and videos.frames_of({}) == 1


@pytest.mark.parametrize("class_name, runs, other", [("WanPipeline", "txt2video", "img2video"),
                                                     ("WanImageToVideoPipeline", "img2video", "txt2video")])
def test_a_wan_folder_runs_only_the_pipeline_its_class_is_for(tmp_path, class_name, runs, other):
    path = str(folder(tmp_path, class_name))
    assert model_info(path).pipelines == (runs,)
    body = {"model": path, "pipeline": other, "prompts": ["x"], "params": {"steps": 2}}
    settings = Settings.from_env({"SDQ_MODELS": path})
    error = _refused(body, settings)
    assert error.field == "pipeline" and runs in error.message and other in error.message, error


@pytest.mark.parametrize("model, runs", [("builtin:tiny-wan", ("txt2video",)), ("builtin:tiny-wan-i2v", ("img2video",)),
                                         ("builtin:tiny-ltx", None)])
def test_the_builtins_say_which_video_pipelines_they_run(model, runs):
    assert model_info(model).pipelines == runs
    assert models.BUILTIN_MODELS[model] == (runs or ("txt2video", "img2video"))


def test_an_ltx_folder_runs_both_video_pipelines(tmp_path):
    assert model_info(str(folder(tmp_path, "LTXPipeline"))).pipelines is None


def test_a_video_job_is_not_watermarked():
    """Clips are not watermarked: asking for it is a 422 naming the field; the operator's default leaves them out."""
    body = {"model": "builtin:tiny-ltx", "pipeline": "txt2video", "prompts": ["x"], "params": {"steps": 2}}
    error = _refused({**body, "params": {"steps": 2, "watermark": True}})
    assert error.field == "params.watermark" and "video" in error.message, error
    marked = Settings.from_env({"SDQ_WATERMARK": "1"})
    assert _plan(body, marked).job.params["watermark"] is False
    assert _plan({**body, "pipeline": "txt2img", "model": "builtin:tiny-sd"}, marked).job.params["watermark"] is True
