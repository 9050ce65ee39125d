"""The Flux.1 family, torch-free: recognised from model_index.json and a single file's tensor names, its
pipeline rows (edit: Kontext), a distilled (schnell-type) model told apart by the model itself, the
defaults and refusals a job gets at submit, and the memory need of a full-size model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdq import families, pipelines
from sdq.memory import quantized
from sdq.modelinfo import is_distilled, model_info
from sdq.config import Settings
from sdq.families import FLUX
from tests.unit.test_families import folder, safetensors
from tests.support.planning import plan as _plan, refused as _refused

DEV_KEYS = ["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "guidance_in.in_layer.weight"]
SCHNELL_KEYS = ["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "img_in.weight"]
DIFFUSERS_KEYS = ["transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.0.proj_out.weight",
                  "time_text_embed.guidance_embedder.linear_1.weight"]


@pytest.mark.parametrize("class_name", ["FluxPipeline", "FluxImg2ImgPipeline", "FluxKontextPipeline"])
def test_a_folders_model_index_reads_as_flux(tmp_path, class_name):
    assert families.detect(folder(tmp_path, class_name)) == FLUX


@pytest.mark.parametrize("keys", [DEV_KEYS, SCHNELL_KEYS, DIFFUSERS_KEYS,
                                  ["model.diffusion_model.double_blocks.0.img_mod.lin.weight"]])
def test_a_single_files_tensor_names_read_as_flux(tmp_path, keys):
    assert families.detect(safetensors(tmp_path / "f.safetensors", keys)) == FLUX


def test_schnell_is_told_apart_by_its_missing_guidance_input(tmp_path):
    assert not is_distilled(safetensors(tmp_path / "dev.safetensors", DEV_KEYS))
    assert is_distilled(safetensors(tmp_path / "schnell.safetensors", SCHNELL_KEYS))
    assert not is_distilled(safetensors(tmp_path / "d.safetensors", DIFFUSERS_KEYS))
    model = folder(tmp_path, "FluxPipeline", name="schnell")
    (model / "transformer").mkdir()
    (model / "transformer" / "config.json").write_text(json.dumps({"guidance_embeds": False}))
    assert is_distilled(model)
    (model / "transformer" / "config.json").write_text(json.dumps({"guidance_embeds": True}))
    assert not is_distilled(model)


def test_the_pipeline_table_has_flux_rows_and_edit_only_where_a_family_has_a_class():
    assert pipelines.pipelines_for(FLUX) == ("txt2img", "img2img", "inpaint", "edit")
    assert pipelines.spec("edit").class_for(FLUX) == "FluxKontextPipeline"
    assert pipelines.spec("edit").class_for(families.SD) is None and pipelines.spec("edit").needs_image
    assert pipelines.base_class(FLUX) == "FluxPipeline"
    assert pipelines.class_kwargs("FluxKontextPipeline", {"width": 64, "height": 48}) == {
        "max_area": 3072, "_auto_resize": False}
    assert pipelines.class_kwargs("FluxPipeline", {"width": 64, "height": 48}) == {}
    p = {"width": 64, "height": 48, "max_sequence_length": 128, "true_cfg_scale": 4.0}
    assert pipelines.family_kwargs(FLUX, p) == {"width": 64, "height": 48, "max_sequence_length": 128,
                                                "true_cfg_scale": 4.0}


def test_the_memory_need_says_a_full_size_flux_does_not_fit_24_gb_in_half_precision():
    need = families.FAMILIES[FLUX].memory.need_gb("bf16", 1024 * 1024)
    assert 24 < need < 40
    assert families.FAMILIES[FLUX].memory.need_gb("fp32", 1024 * 1024) == pytest.approx(2 * need)


def test_a_local_flux_folder_defaults_to_1024_px_28_steps_and_dev_guidance(tmp_path):
    model = folder(tmp_path, "FluxPipeline")
    settings = Settings.from_env({"SDQ_MODELS": str(model)})
    item = _plan({"model": str(model), "prompts": ["a"]}, settings).items[0].params
    assert (item["width"], item["height"], item["steps"], item["guidance_scale"]) == (1024, 1024, 28, 3.5)
    assert item["max_sequence_length"] == 256 and "true_cfg_scale" not in item


def test_a_local_schnell_file_defaults_to_4_steps_and_refuses_guidance_and_long_prompts(tmp_path):
    model = str(safetensors(tmp_path / "flux1-schnell.safetensors", SCHNELL_KEYS))
    settings = Settings.from_env({"SDQ_MODELS": model})
    item = _plan({"model": model, "prompts": ["a"]}, settings).items[0].params
    assert (item["steps"], item["guidance_scale"], item["width"]) == (4, 0.0, 1024)
    err = _refused({"model": model, "prompts": ["a"], "params": {"guidance_scale": 3.5}}, settings)
    assert err.field == "params.guidance_scale" and "3.5" in err.message
    err = _refused({"model": model, "prompts": ["a"], "params": {"max_sequence_length": 300}}, settings)
    assert err.field == "params.max_sequence_length" and "300" in err.message and "256" in err.message


@pytest.mark.parametrize("params, field, value", [
    ({"width": 1000}, "params.width", "1000"),
    ({"height": 520}, "params.height", "520"),
    ({"crop_left": 8}, "params.crop_left", "8"),
    ({"negative_prompt": "fog", "true_cfg_scale": 1.0}, "params.negative_prompt", "1.0"),
    ({"true_cfg_scale": 3.0}, "params.true_cfg_scale", "3.0"),
])
def test_bad_flux_parameters_are_refused_with_the_value(params, field, value):
    err = _refused({"model": "builtin:tiny-flux", "prompts": ["a"], "params": params})
    assert err.field == field and value in err.message


def test_a_per_item_negative_prompt_is_checked_against_true_cfg():
    err = _refused({"model": "builtin:tiny-flux", "items": [{"prompt": "a"}, {"prompt": "b", "negative_prompt": "x"}]})
    assert err.field == "items[1].negative_prompt"
    plan = _plan({"model": "builtin:tiny-flux", "params": {"true_cfg_scale": 2.0, "negative_prompt": "x"},
                  "items": [{"prompt": "a"}]})
    assert plan.items[0].params["true_cfg_scale"] == 2.0 and plan.items[0].negative_prompt == "x"


def test_flux_parameters_are_refused_on_other_families():
    err = _refused({"model": "builtin:tiny-sd", "prompts": ["a"], "params": {"true_cfg_scale": 2.0}})
    assert err.field == "params.true_cfg_scale" and "Flux.1" in err.message
    err = _refused({"model": "builtin:tiny-sdxl", "prompts": ["a"], "pipeline": "edit",
                    "params": {"init_image": "uploads/x.png"}})
    assert err.field == "pipeline"


def test_a_gguf_transformer_counts_its_file_size_in_the_need():
    """A Q8_0 FLUX.1-dev transformer file is ~12.7 GB: with the other components in bf16 the need at 1024x1024
    then fits a 24 GB GPU, which the full-precision model does not."""
    full = families.FAMILIES[FLUX].memory
    q8 = quantized(full, 12.7e9 / 2**30)
    assert q8.need_gb("bf16", 1024 * 1024) < 24 < full.need_gb("bf16", 1024 * 1024)
    assert q8.weights_gb == pytest.approx(31.5 * 0.3 + 12.7e9 / 2**30, abs=0.01)


def test_a_gguf_file_is_a_single_file_model_read_through_its_config_folder(tmp_path):
    from sdq.models import model_kind

    file = tmp_path / "flux1-dev-Q8_0.gguf"
    file.write_bytes(b"GGUF" + bytes(60))
    assert model_kind(str(file)) == "file"
    with pytest.raises(families.UnknownFamily, match="config folder"):
        families.detect(file)
    folder(tmp_path, "FluxPipeline", name="flux1-dev-Q8_0")
    info = model_info(str(file))
    assert info.family.name == FLUX and info.memory.weights_gb < 10
