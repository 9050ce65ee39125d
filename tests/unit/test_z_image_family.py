"""The Z-Image family, torch-free: recognised from model_index.json and a single file's tensor names, its
pipeline rows, a Turbo model told apart by its name, the defaults and refusals a job gets at submit, and the
memory need of a full-size model."""
from __future__ import annotations

import json

import pytest

from sdq import families, pipelines
from sdq.config import Settings
from sdq.families import Z_IMAGE
from sdq.modelinfo import is_turbo, model_info
from tests.unit.test_families import folder, safetensors
from tests.support.planning import plan as _plan, refused as _refused

ORIGINAL_KEYS = ["cap_embedder.1.weight", "layers.0.adaLN_modulation.0.weight", "layers.0.attention.qkv.weight",
                 "noise_refiner.0.attention.qkv.weight", "x_embedder.weight", "final_layer.linear.weight"]
COMFY_KEYS = ["model.diffusion_model." + k for k in ORIGINAL_KEYS]
DIFFUSERS_KEYS = ["all_x_embedder.2-1.weight", "layers.0.attention.to_q.weight", "all_final_layer.2-1.linear.weight"]
LUMINA2_KEYS = ["cap_embedder.0.weight", "layers.0.adaLN_modulation.1.weight", "noise_refiner.0.attention.qkv.weight"]


@pytest.mark.parametrize("class_name", ["ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline"])
def test_a_folders_model_index_reads_as_z_image(tmp_path, class_name):
    assert families.detect(folder(tmp_path, class_name)) == Z_IMAGE


@pytest.mark.parametrize("keys", [ORIGINAL_KEYS, COMFY_KEYS, DIFFUSERS_KEYS])
def test_a_single_files_tensor_names_read_as_z_image(tmp_path, keys):
    assert families.detect(safetensors(tmp_path / "z.safetensors", keys)) == Z_IMAGE


def test_z_image_is_not_refused_as_unsupported_and_its_lumina_ancestor_is_not_taken_for_it(tmp_path):
    assert families.unsupported("ZImagePipeline") is None
    with pytest.raises(families.UnknownFamily):  # Lumina 2's modulation is `.1.`, Z-Image's `.0.`
        families.detect(safetensors(tmp_path / "lumina.safetensors", LUMINA2_KEYS))
    with pytest.raises(families.UnsupportedFamily, match="Lumina"):
        families.detect(folder(tmp_path, "Lumina2Pipeline"))


def test_turbo_is_told_apart_by_its_name_or_the_name_its_index_records(tmp_path):
    assert is_turbo(safetensors(tmp_path / "z_image_turbo_bf16.safetensors", ORIGINAL_KEYS))
    assert not is_turbo(safetensors(tmp_path / "z_image_bf16.safetensors", ORIGINAL_KEYS))
    assert is_turbo(folder(tmp_path, "ZImagePipeline", name="Z-Image-Turbo"))
    copy = folder(tmp_path, "ZImagePipeline", name="my-finetune")
    assert not is_turbo(copy)
    index = copy / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "_name_or_path": "Tongyi-MAI/Z-Image-Turbo"}))
    assert is_turbo(copy)


def test_the_pipeline_table_has_z_image_rows():
    assert pipelines.pipelines_for(Z_IMAGE) == ("txt2img", "img2img", "inpaint")
    assert pipelines.spec("inpaint").class_for(Z_IMAGE) == "ZImageInpaintPipeline"
    assert pipelines.base_class(Z_IMAGE) == "ZImagePipeline"
    assert pipelines.family_of_class("ZImageImg2ImgPipeline") == Z_IMAGE
    p = {"width": 64, "height": 48, "max_sequence_length": 128}
    assert pipelines.family_kwargs(Z_IMAGE, p) == {"width": 64, "height": 48, "max_sequence_length": 128}


def test_the_memory_need_fits_a_24_gb_device_and_not_a_16_gb_one_in_half_precision_at_1024_px():
    mem = families.FAMILIES[Z_IMAGE].memory
    assert 16 < mem.need_gb("bf16", 1024 * 1024) < 24
    assert mem.need_gb("fp32", 1024 * 1024) == pytest.approx(2 * mem.need_gb("bf16", 1024 * 1024))


def test_a_local_z_image_folder_defaults_to_1024_px_50_steps_and_guidance_5(tmp_path):
    model = folder(tmp_path, "ZImagePipeline", name="Z-Image")
    settings = Settings.from_env({"SDQ_MODELS": str(model)})
    item = _plan({"model": str(model), "prompts": ["a"]}, settings).items[0].params
    assert (item["width"], item["height"], item["steps"], item["guidance_scale"]) == (1024, 1024, 50, 5.0)
    assert item["scheduler"] == "flow_euler" and item["max_sequence_length"] == 256
    assert "true_cfg_scale" not in item


def test_a_local_turbo_file_defaults_to_8_steps_without_guidance_and_refuses_guidance_and_negatives(tmp_path):
    model = str(safetensors(tmp_path / "z_image_turbo_bf16.safetensors", COMFY_KEYS))
    settings = Settings.from_env({"SDQ_MODELS": model})
    info = model_info(model)
    assert info.distilled and info.family.name == Z_IMAGE and "Turbo" in info.family.title
    item = _plan({"model": model, "prompts": ["a"]}, settings).items[0].params
    assert (item["steps"], item["guidance_scale"], item["width"]) == (8, 0.0, 1024)
    err = _refused({"model": model, "prompts": ["a"], "params": {"guidance_scale": 4.0}}, settings)
    assert err.field == "params.guidance_scale" and "4.0" in err.message
    err = _refused({"model": model, "prompts": ["a"], "params": {"negative_prompt": "fog"}}, settings)
    assert err.field == "params.negative_prompt" and "Turbo" in err.message


def test_the_builtins_read_as_z_image_and_turbo():
    base, turbo = model_info("builtin:tiny-z-image"), model_info("builtin:tiny-z-image-turbo")
    assert base.family.name == turbo.family.name == Z_IMAGE
    assert (base.distilled, turbo.distilled) == (False, True)
    assert base.default_side == turbo.default_side == 128
    plan = _plan({"model": "builtin:tiny-z-image", "prompts": ["a"], "params": {"negative_prompt": "fog"}})
    assert plan.items[0].params["guidance_scale"] == 5.0 and plan.items[0].negative_prompt == "fog"


@pytest.mark.parametrize("params, field, value", [
    ({"width": 1000}, "params.width", "1000"),
    ({"height": 136}, "params.height", "136"),
    ({"max_sequence_length": 600}, "params.max_sequence_length", "600"),
    ({"guidance_scale": 31.0}, "params.guidance_scale", "31.0"),
    ({"scheduler": "euler"}, "params.scheduler", "euler"),
    ({"true_cfg_scale": 3.0}, "params.true_cfg_scale", "3.0"),
    ({"original_width": 512}, "params.original_width", "512"),
])
def test_bad_z_image_parameters_are_refused_with_the_value(params, field, value):
    err = _refused({"model": "builtin:tiny-z-image", "prompts": ["a"], "params": params})
    assert err.field == field and value in err.message


def test_another_familys_parameter_names_the_family_that_takes_it():
    err = _refused({"model": "builtin:tiny-z-image", "prompts": ["a"], "params": {"true_cfg_scale": 2.0}})
    assert "Flux.1" in err.message and "Z-Image" in err.message
    err = _refused({"model": "builtin:tiny-z-image", "prompts": ["a"], "pipeline": "edit",
                    "params": {"init_image": "uploads/x.png"}})
    assert err.field == "pipeline" and "txt2img, img2img, inpaint" in err.message
