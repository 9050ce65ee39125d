"""The Qwen-Image families, torch-free: Qwen-Image and Qwen-Image-Edit recognised from model_index.json, a single
file's tensor names read as Qwen-Image (an Edit file only through its config folder), their pipeline rows (edit only
on an Edit model, txt2img/img2img/inpaint only on a plain one), the defaults and refusals a job gets at submit,
and the estimated memory need of a full-size model."""
from __future__ import annotations

import pytest

from producer.planning.jobs import plan_job
from producer.schemas import parse_submit
from sdq import families, pipelines
from sdq.config import Settings
from sdq.families import FLUX, QWEN_IMAGE, QWEN_IMAGE_EDIT
from sdq.modelinfo import TINY, model_info
from tests.support.planning import refused as _refused
from tests.unit.test_families import folder, safetensors

QWEN_KEYS = ["img_in.weight", "txt_norm.weight", "txt_in.weight", "transformer_blocks.0.img_mod.1.weight",
             "transformer_blocks.0.attn.add_k_proj.weight", "proj_out.weight"]
"""Tensor names of a Qwen-Image transformer file as published (diffusers' names, no prefix)."""
COMFY_KEYS = ["model.diffusion_model." + k for k in QWEN_KEYS]
"""The same with the `model.diffusion_model.` prefix some tools save."""


@pytest.mark.parametrize("class_name, family", [
    ("QwenImagePipeline", QWEN_IMAGE), ("QwenImageImg2ImgPipeline", QWEN_IMAGE),
    ("QwenImageInpaintPipeline", QWEN_IMAGE), ("QwenImageEditPipeline", QWEN_IMAGE_EDIT),
])
def test_a_folders_model_index_reads_as_its_qwen_family(tmp_path, class_name, family):
    assert families.detect(folder(tmp_path, class_name)) == family


@pytest.mark.parametrize("class_name", ["QwenImageEditPlusPipeline", "QwenImageLayeredPipeline",
                                        "QwenImageControlNetPipeline"])
def test_qwen_variants_sdq_does_not_run_are_refused_by_name(tmp_path, class_name):
    with pytest.raises(families.UnsupportedFamily, match=f"{class_name} is a Qwen-Image variant"):
        families.detect(folder(tmp_path, class_name))


@pytest.mark.parametrize("keys", [QWEN_KEYS, COMFY_KEYS])
def test_a_single_files_tensor_names_read_as_qwen_image(tmp_path, keys):
    assert families.detect(safetensors(tmp_path / "qwen-image.safetensors", keys)) == QWEN_IMAGE


def test_flux_files_do_not_read_as_qwen_nor_qwen_files_as_flux(tmp_path):
    flux = ["transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.0.proj_out.weight"]
    assert families.detect(safetensors(tmp_path / "flux.safetensors", flux)) == FLUX
    assert families.from_keys(QWEN_KEYS) == QWEN_IMAGE
    assert not any(k.startswith(families.FAMILIES[FLUX].file_keys) for k in QWEN_KEYS + COMFY_KEYS)


def test_an_edit_file_is_told_apart_only_by_its_config_folder(tmp_path):
    file = safetensors(tmp_path / "qwen-image-edit.safetensors", QWEN_KEYS)
    assert families.detect(file) == QWEN_IMAGE  # same tensor names as Qwen-Image
    folder(tmp_path, "QwenImageEditPipeline", name="qwen-image-edit")
    assert families.detect(file) == QWEN_IMAGE_EDIT


def test_the_pipeline_rows_give_edit_only_to_edit_models():
    assert pipelines.pipelines_for(QWEN_IMAGE) == ("txt2img", "img2img", "inpaint")
    assert pipelines.pipelines_for(QWEN_IMAGE_EDIT) == ("edit",)
    assert pipelines.spec("edit").class_for(QWEN_IMAGE_EDIT) == "QwenImageEditPipeline"
    assert pipelines.spec("inpaint").class_for(QWEN_IMAGE) == "QwenImageInpaintPipeline"
    assert pipelines.base_class(QWEN_IMAGE) == "QwenImagePipeline"
    assert pipelines.base_class(QWEN_IMAGE_EDIT) == "QwenImageEditPipeline"
    assert pipelines.family_of_class("QwenImageImg2ImgPipeline") == QWEN_IMAGE


def test_the_family_kwargs_pass_size_tokens_and_true_cfg_and_no_guidance_input():
    p = {"width": 64, "height": 48, "max_sequence_length": 128, "true_cfg_scale": 4.0}
    assert pipelines.family_kwargs(QWEN_IMAGE, p) == {"width": 64, "height": 48, "max_sequence_length": 128,
                                                      "true_cfg_scale": 4.0, "guidance_scale": None}
    # no true CFG asked: 1.0, not diffusers' default 4.0 (which would run CFG whenever a negative prompt is sent)
    assert pipelines.family_kwargs(QWEN_IMAGE_EDIT, {**p, "true_cfg_scale": None})["true_cfg_scale"] == 1.0


def test_the_memory_need_of_a_full_size_model_is_over_48_gb_in_half_precision():
    need = families.FAMILIES[QWEN_IMAGE].memory.need_gb("bf16", 1024 * 1024)
    assert 48 < need < 64
    assert families.FAMILIES[QWEN_IMAGE_EDIT].memory == families.FAMILIES[QWEN_IMAGE].memory


def test_the_tiny_builtin_is_qwen_image_at_128_px_with_little_memory():
    info = model_info("builtin:tiny-qwen-image")
    assert info.family.name == QWEN_IMAGE and info.default_side == 128 and info.memory == TINY


def test_the_model_catalog_shows_the_family_and_its_defaults():
    from producer.catalog import catalog

    entry = next(m for m in catalog((), []) if m["id"] == "builtin:tiny-qwen-image")
    assert (entry["family"], entry["family_title"], entry["pipelines"]) == (QWEN_IMAGE, "Qwen-Image",
                                                                           ["txt2img", "img2img", "inpaint"])
    assert entry["defaults"] == {"width": 128, "height": 128, "steps": 50, "scheduler": "flow_euler",
                                 "guidance_scale": 0.0}
    assert entry["size_multiple"] == 16


def _local(tmp_path, class_name: str) -> tuple[str, Settings]:
    model = str(folder(tmp_path, class_name, name=class_name))
    return model, Settings.from_env({"SDQ_MODELS": model})


def test_a_local_qwen_image_folder_defaults_to_1024_px_50_steps_and_no_guidance_input(tmp_path):
    model, settings = _local(tmp_path, "QwenImagePipeline")
    item = plan_job(parse_submit({"model": model, "prompts": ["a"]}), settings, owner="alice").items[0].params
    assert (item["width"], item["height"], item["steps"], item["scheduler"]) == (1024, 1024, 50, "flow_euler")
    assert item["guidance_scale"] == 0.0 and item["max_sequence_length"] == 256 and "true_cfg_scale" not in item


@pytest.mark.parametrize("params, field, value", [
    ({"width": 1000}, "params.width", "1000"),
    ({"height": 72}, "params.height", "72"),
    ({"original_width": 512}, "params.original_width", "512"),
    ({"guidance_scale": 4.0}, "params.guidance_scale", "4.0"),
    ({"negative_prompt": "fog"}, "params.negative_prompt", "None"),
    ({"true_cfg_scale": 4.0}, "params.true_cfg_scale", "4.0"),
    ({"max_sequence_length": 600}, "params.max_sequence_length", "600"),
    ({"scheduler": "euler"}, "params.scheduler", "euler"),
])
def test_bad_qwen_image_parameters_are_refused_with_the_value(tmp_path, params, field, value):
    model, settings = _local(tmp_path, "QwenImagePipeline")
    err = _refused({"model": model, "prompts": ["a"], "params": params}, settings)
    assert err.field == field and value in err.message, err.message


def test_edit_on_a_plain_model_and_txt2img_on_an_edit_model_are_refused_naming_the_pipeline(tmp_path):
    plain, settings = _local(tmp_path, "QwenImagePipeline")
    err = _refused({"model": plain, "prompts": ["a"], "pipeline": "edit", "params": {"init_image": "uploads/x.png"}},
                   settings)
    assert err.field == "pipeline" and "Qwen-Image model" in err.message and "txt2img" in err.message
    edit, settings = _local(tmp_path, "QwenImageEditPipeline")
    err = _refused({"model": edit, "prompts": ["a"]}, settings)
    assert err.field == "pipeline" and "Qwen-Image-Edit" in err.message and "edit" in err.message


def test_true_cfg_with_a_negative_prompt_is_taken_and_recorded(tmp_path):
    model, settings = _local(tmp_path, "QwenImageEditPipeline")
    plan = plan_job(parse_submit({"model": model, "prompts": ["make it red"], "pipeline": "edit",
                                  "params": {"init_image": "uploads/x.png", "negative_prompt": " ",
                                             "true_cfg_scale": 4.0, "width": 832, "height": 1216}}),
                    settings, owner="alice")
    item = plan.items[0]
    assert item.params["true_cfg_scale"] == 4.0 and item.negative_prompt == " "
    assert (item.params["width"], item.params["height"], item.params["steps"]) == (832, 1216, 50)
