"""`params.hires` and `params.controlnet` in the option table (`sdq.options`) and at submit (no services)."""
from __future__ import annotations

import pytest

from producer.planning.jobs import plan_job
from producer.schemas import parse_submit
from sdq import contract, options, pipelines
from sdq.options import controlnet
from sdq.celery_app import item_queue
from sdq.config import Settings
from sdq.exceptions import InvalidInput
from sdq.infotext import format_infotext, params_from_infotext, parse_infotext
from sdq.records import MANIFEST, STATUS, Item, shown_in
from sdq.scheduling import speed

SETTINGS = Settings.from_env({})
HIRES = {"scale": 2.0, "strength": 0.5, "steps": 10}


def _plan(body: dict, uploads=None):
    return plan_job(parse_submit({"prompts": ["a"], **body}), SETTINGS, owner="alice", uploads=uploads)


def test_hires_counts_the_larger_size_and_both_passes():
    params = {"steps": 20, "width": 512, "height": 384, "hires": HIRES}
    assert contract.item_size("txt2img", params) == (1024, 768)
    assert options.loop_steps("txt2img", params) == 20 + 5
    assert speed.item_work("txt2img", params) == pytest.approx((20 * 512 * 384 + 5 * 1024 * 768) / 1e6)
    assert contract.item_size("txt2img", {**params, "hires": {**HIRES, "scale": 1.3}}) == (664, 496)


def test_the_queue_pixel_class_holds_the_final_size():
    plan = _plan({"params": {"steps": 4, "hires": {"scale": 2}}})
    item = plan.items[0]
    assert item.params["hires"] == {"scale": 2.0, "strength": 0.7, "steps": 4}  # steps: the item's
    assert item.size == [1024, 1024] and "size" in shown_in(Item, STATUS) and "size" in shown_in(Item, MANIFEST)
    assert item_queue(plan.job, item.params).endswith(".p1024")
    assert item_queue(plan.job, {**item.params, "hires": None}).endswith(".p512")


def test_a_hires_size_beyond_the_limit_names_the_scale():
    with pytest.raises(InvalidInput) as err:
        _plan({"params": {"width": 768, "height": 768, "hires": {"scale": 2}}})
    assert err.value.field == "params.hires.scale" and "1536x1536" in err.value.message


def test_items_without_extras_keep_their_parameters():
    params = _plan({}).items[0].params
    assert "hires" not in params and "controlnet" not in params


def test_controlnet_classes_come_from_the_table():
    assert controlnet.class_for("txt2img", pipelines.SD) == "StableDiffusionControlNetPipeline"
    assert controlnet.USES["img2img"].kwarg == "control_image"
    assert controlnet.class_for("upscale", pipelines.SD_UPSCALE) is None
    assert "StableDiffusionControlNetPipeline" in options.pipeline_classes()


def test_controlnet_on_the_upscaler_names_the_field():
    with pytest.raises(InvalidInput) as err:
        _plan({"model": "builtin:tiny-upscaler", "pipeline": "upscale",
               "params": {"init_image": "uploads/x.png", "controlnet": {"image": "uploads/y.png"}}})
    assert err.value.field == "params.controlnet"


def test_the_infotext_round_trips_hires_and_controlnet():
    params = {"hires": HIRES, "controlnet": {"model": "builtin:tiny-controlnet", "image": "uploads/ab.png",
                                             "scale": 0.75}}
    fields = {"Steps": 20, "Size": "64x64", **options.infotext(params)}
    info = parse_infotext(format_infotext("a cat", "", fields))
    assert info["Hires upscaler"] == "Lanczos" and info["Denoising strength"] == "0.5"
    back = params_from_infotext(info)
    assert back["hires"] == HIRES and back["controlnet"] == params["controlnet"]


def test_a_hires_size_off_the_familys_multiple_names_the_scale():
    """SD3 needs sides that are multiples of 16: 64 x 1.25 = 80 is, 64 x 1.125 = 72 is not."""
    base = {"model": "builtin:tiny-sd3", "params": {"width": 64, "height": 64}}
    assert _plan({**base, "params": {**base["params"], "hires": {"scale": 1.25}}}).items[0].size == [80, 80]
    with pytest.raises(InvalidInput) as err:
        _plan({**base, "params": {**base["params"], "hires": {"scale": 1.125}}})
    assert err.value.field == "params.hires.scale" and "72x72" in err.value.message


@pytest.mark.parametrize("model, kind", [("some-org/some-controlnet", "hub"), ("/models/cn.safetensors", "file")])
def test_a_controlnet_from_a_source_the_worker_cannot_load_it_from_is_a_422(model, kind):
    """Issue 39 defect 10: an allowlisted hub id or checkpoint file was accepted and failed on the worker."""
    settings = Settings.from_env({"SDQ_MODELS": model})
    with pytest.raises(InvalidInput) as err:
        plan_job(parse_submit({"prompts": ["a"], "params": {"controlnet": {"image": "uploads/y.png", "model": model}}}),
                 settings, owner="alice", uploads=lambda key, field: {"key": key, "width": 64, "height": 64})
    assert (err.value.field, err.value.code) == ("params.controlnet.model", "unsupported_source")
    assert f"a {kind} id" in err.value.message and "store:NAME" in err.value.message


def test_a_pushed_controlnet_folder_is_told_apart_from_a_model():
    """`sdq models push` says where to name a single model's folder; a pipeline's folder is a model."""
    folder = {"kind": "folder", "files": [{"path": "config.json"}, {"path": "diffusion_pytorch_model.safetensors"}]}
    assert "params.controlnet.model" in controlnet.ControlNet().push_note(folder)
    pipeline = {"kind": "folder", "files": [*folder["files"], {"path": "model_index.json"}]}
    assert controlnet.ControlNet().push_note(pipeline) is None
