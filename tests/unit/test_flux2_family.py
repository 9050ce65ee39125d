"""The Flux.2 families, torch-free: dev and Klein recognised from model_index.json and from a single file's tensor
names (Flux.2's files also carry Flux.1's markers), a step-distilled Klein told apart by its `is_distilled`, the
pipeline rows (no img2img; inpaint only for Klein; edit through the reference-image input), the defaults and
refusals a job gets at submit, and the memory need of the full-size models."""
from __future__ import annotations

import json

import pytest

from sdq import families, pipelines
from sdq.config import Settings
from sdq.families import FLUX, FLUX2, FLUX2_KLEIN, UnsupportedFamily
from sdq.modelinfo import is_distilled, model_info
from tests.unit.test_families import folder, safetensors
from tests.support.planning import plan as _plan, refused as _refused

BFL_DEV_KEYS = ["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight",
                "single_stream_modulation.lin.weight", "guidance_in.in_layer.weight", "txt_in.weight"]
BFL_KLEIN_KEYS = ["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight",
                  "single_stream_modulation.lin.weight", "time_in.in_layer.weight", "txt_in.weight"]
DIFFUSERS_DEV_KEYS = ["transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.0.attn.to_out.weight",
                      "single_stream_modulation.linear.weight", "time_guidance_embed.guidance_embedder.linear_1.weight"]
DIFFUSERS_KLEIN_KEYS = ["transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.0.attn.to_out.weight",
                        "single_stream_modulation.linear.weight",
                        "time_guidance_embed.timestep_embedder.linear_1.weight"]
FLUX1_KEYS = ["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "guidance_in.in_layer.weight"]


@pytest.mark.parametrize("class_name, family", [
    ("Flux2Pipeline", FLUX2), ("Flux2KleinPipeline", FLUX2_KLEIN), ("Flux2KleinInpaintPipeline", FLUX2_KLEIN),
])
def test_a_folders_model_index_reads_as_flux2_dev_or_klein(tmp_path, class_name, family):
    assert families.detect(folder(tmp_path, class_name)) == family


def test_the_klein_kv_cache_class_is_recognised_and_refused_by_name(tmp_path):
    with pytest.raises(UnsupportedFamily, match="Flux.2 Klein KV"):
        families.detect(folder(tmp_path, "Flux2KleinKVPipeline"))


@pytest.mark.parametrize("keys, family", [
    (BFL_DEV_KEYS, FLUX2), (BFL_KLEIN_KEYS, FLUX2_KLEIN), (DIFFUSERS_DEV_KEYS, FLUX2),
    (DIFFUSERS_KLEIN_KEYS, FLUX2_KLEIN), (["model.diffusion_model." + k for k in BFL_DEV_KEYS], FLUX2),
    (["model.diffusion_model." + k for k in BFL_KLEIN_KEYS], FLUX2_KLEIN), (FLUX1_KEYS, FLUX),
])
def test_a_single_files_tensor_names_tell_flux2_dev_klein_and_flux1_apart(tmp_path, keys, family):
    """A Flux.2 file in BFL's layout has Flux.1's `double_blocks.` too: its `single_stream_modulation` decides;
    dev has the guidance input, Klein has none."""
    assert families.detect(safetensors(tmp_path / "f.safetensors", keys)) == family


def test_a_distilled_klein_is_told_apart_by_its_model_index_not_its_missing_guidance_input(tmp_path):
    model = folder(tmp_path, "Flux2KleinPipeline")
    (model / "transformer").mkdir()
    (model / "transformer" / "config.json").write_text(json.dumps({"guidance_embeds": False}))  # every Klein's
    assert not is_distilled(model, FLUX2_KLEIN)
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "is_distilled": True}))
    assert is_distilled(model, FLUX2_KLEIN)
    assert not is_distilled(safetensors(tmp_path / "klein.safetensors", BFL_KLEIN_KEYS), FLUX2_KLEIN)


def test_the_pipeline_table_gives_dev_and_klein_their_own_classes():
    assert pipelines.pipelines_for(FLUX2) == ("txt2img", "edit")
    assert pipelines.pipelines_for(FLUX2_KLEIN) == ("txt2img", "inpaint", "edit")
    assert pipelines.spec("img2img").class_for(FLUX2_KLEIN) is None  # diffusers has no Flux.2 img2img class
    assert (pipelines.base_class(FLUX2), pipelines.base_class(FLUX2_KLEIN)) == ("Flux2Pipeline", "Flux2KleinPipeline")
    assert pipelines.spec("edit").class_for(FLUX2) == "Flux2Pipeline"  # the reference-image input
    assert pipelines.spec("inpaint").class_for(FLUX2_KLEIN) == "Flux2KleinInpaintPipeline"
    assert pipelines.REFERENCE_CLASSES == {"Flux2Pipeline", "Flux2KleinPipeline"}
    p = {"width": 64, "height": 48, "max_sequence_length": 128}
    assert pipelines.family_kwargs(FLUX2_KLEIN, p) == p and pipelines.family_kwargs(FLUX2, p) == p


def test_the_memory_need_of_dev_exceeds_one_80_gb_gpu_and_kleins_fits_48_gb_in_half_precision():
    dev, klein = families.FAMILIES[FLUX2].memory, families.FAMILIES[FLUX2_KLEIN].memory
    assert 80 < dev.need_gb("bf16", 1024 * 1024) < 120
    assert 24 < klein.need_gb("bf16", 1024 * 1024) < 48
    assert klein.need_gb("fp32", 1024 * 1024) == pytest.approx(2 * klein.need_gb("bf16", 1024 * 1024))


@pytest.mark.parametrize("class_name", ["Flux2Pipeline", "Flux2KleinPipeline"])
def test_a_local_flux2_folder_defaults_to_1024_px_50_steps_and_guidance_4(tmp_path, class_name):
    model = folder(tmp_path, class_name)
    settings = Settings.from_env({"SDQ_MODELS": str(model)})
    item = _plan({"model": str(model), "prompts": ["a"]}, settings).items[0].params
    assert (item["width"], item["height"], item["steps"], item["guidance_scale"]) == (1024, 1024, 50, 4.0)
    assert item["scheduler"] == "flow_euler" and item["max_sequence_length"] == 256
    assert model_info(str(model)).memory == families.FAMILIES[families.from_class_name(class_name)].memory


def test_a_local_distilled_klein_defaults_to_4_steps_and_refuses_guidance(tmp_path):
    model = folder(tmp_path, "Flux2KleinPipeline")
    (model / "model_index.json").write_text(json.dumps({"_class_name": "Flux2KleinPipeline", "is_distilled": True}))
    settings = Settings.from_env({"SDQ_MODELS": str(model)})
    item = _plan({"model": str(model), "prompts": ["a"]}, settings).items[0].params
    assert (item["steps"], item["guidance_scale"]) == (4, 0.0)
    err = _refused({"model": str(model), "prompts": ["a"], "params": {"guidance_scale": 4.0}}, settings)
    assert err.field == "params.guidance_scale" and "4.0" in err.message


def test_the_tiny_builtins_are_klein_shaped_and_one_is_distilled():
    base, distilled = model_info("builtin:tiny-flux2"), model_info("builtin:tiny-flux2-distilled")
    assert base.family.name == distilled.family.name == FLUX2_KLEIN and base.default_side == 128
    assert not base.distilled and distilled.distilled and distilled.family.default_steps == 4


def test_the_tiny_dev_builtin_is_flux2_dev_and_runs_txt2img_and_edit():
    from sdq.models import BUILTIN_MODELS

    info = model_info("builtin:tiny-flux2-dev")
    assert info.family.name == FLUX2 and info.default_side == 128 and not info.distilled
    assert info.family.guidance[2] == 4.0 and info.memory.weights_gb < 1  # a tiny built-in's need, not dev's 104 GB
    assert BUILTIN_MODELS["builtin:tiny-flux2-dev"] == ("txt2img", "edit")


@pytest.mark.parametrize("body, field, words", [
    ({"params": {"width": 72}}, "params.width", ["72", "16"]),
    ({"params": {"negative_prompt": "fog"}}, "params.negative_prompt", ["Flux.2 Klein"]),
    ({"items": [{"prompt": "a"}, {"prompt": "b", "negative_prompt": "x"}]}, "items[1].negative_prompt",
     ["no negative"]),
    ({"params": {"true_cfg_scale": 4.0}}, "params.true_cfg_scale", ["Flux.1", "Flux.2 Klein"]),
    ({"params": {"original_width": 512}}, "params.original_width", ["Stable Diffusion XL"]),
    ({"params": {"max_sequence_length": 600}}, "params.max_sequence_length", ["600"]),
    ({"params": {"scheduler": "euler"}}, "params.scheduler", ["flow_euler"]),
    ({"pipeline": "img2img", "params": {"init_image": "uploads/x.png"}}, "pipeline", ["img2img", "inpaint", "edit"]),
    ({"params": {"hires": {"scale": 2}}}, "params.hires", ["img2img"]),
    ({"params": {"preview": True}}, "params.preview", ["flux2-klein"]),
])
def test_bad_flux2_requests_are_refused_naming_the_field(body, field, words):
    err = _refused({"model": "builtin:tiny-flux2", **({} if "items" in body else {"prompts": ["a"]}), **body})
    assert err.field == field, err.message
    assert all(w in err.message for w in words), err.message


def test_inpaint_is_refused_for_a_dev_model(tmp_path):
    dev = folder(tmp_path, "Flux2Pipeline", name="dev")
    settings = Settings.from_env({"SDQ_MODELS": str(dev)})
    err = _refused({"model": str(dev), "pipeline": "inpaint", "prompts": ["a"],
                    "params": {"init_image": "uploads/x.png", "mask_image": "uploads/m.png"}}, settings)
    assert err.field == "pipeline" and "Flux.2 dev" in err.message


def test_an_adapters_family_tells_flux2_klein_dev_and_flux1_apart():
    """Flux.2 adapters in diffusers' layout have modules Flux.1 has not (`to_qkv_mlp_proj`); dev's are 6144 wide;
    a trainer's `modelspec.architecture` decides first, and Flux.2's is not read as Flux.1's `flux` prefix."""
    from sdq import loras

    def header(width: int, **meta: str) -> dict:
        shape = {"dtype": "F32", "shape": [4, width], "data_offsets": [0, 0]}
        return {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": shape,
                "transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj.lora_A.weight": shape,
                "__metadata__": meta}

    assert loras.family_from_header(header(3072)) == FLUX2_KLEIN
    assert loras.family_from_header(header(6144)) == FLUX2
    assert loras.family_from_header(header(32, **{"modelspec.architecture": "flux-2-dev/lora"})) == FLUX2
    assert loras.family_from_header(header(32, **{"modelspec.architecture": "flux-1-dev/lora"})) == FLUX
    flux1 = ["transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight", "transformer.x_embedder.lora_A.weight"]
    assert loras.family_from_keys(flux1) == FLUX
