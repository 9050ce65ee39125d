"""LoRA adapters at submit and in infotext (`sdq.loras`): names, families, tags, hashes."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from sdq import loras
from sdq.exceptions import InvalidInput
from sdq.infotext import format_infotext, parse_infotext, submit_body_from_infotext

TINY = [{"name": "builtin:tiny-lora", "scale": 0.8}]


def check(entries, model: str, pipeline: str, allow: tuple[str, ...]):
    """`check_loras` with the model's family as the producer reads it."""
    from sdq.modelinfo import model_info

    fam = model_info(model).family
    return loras.check_loras(entries, model, pipeline, allow, fam.name if fam else None)


def write_safetensors(path: Path, keys: list[str], metadata: dict[str, str] | None = None) -> Path:
    """A valid .safetensors file holding one 1-element fp32 tensor per key."""
    header: dict = {k: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, k in enumerate(keys)}
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * (4 * len(keys)))
    return path


def test_a_builtin_lora_is_accepted_for_its_family_with_the_default_scale():
    got = check([{"name": "builtin:tiny-lora", "scale": None}], "builtin:tiny-sd", "txt2img", ())
    assert got == [{"name": "builtin:tiny-lora", "scale": 1.0}]


@pytest.mark.parametrize("entries, model, pipeline, allow, field, words", [
    ([{"name": "builtin:nope"}], "builtin:tiny-sd", "txt2img", (), "params.loras[0].name", "unknown LoRA"),
    (TINY, "builtin:tiny-sdxl", "txt2img", (), "params.loras[0].name", "is for the sd family; model"),
    (TINY, "builtin:tiny-upscaler", "upscale", (), "params.loras", "does not take LoRA adapters"),
    (TINY * 2, "builtin:tiny-sd", "txt2img", (), "params.loras[1].name", "named twice"),
    ([{"name": "/x/a.ckpt"}], "builtin:tiny-sd", "txt2img", ("/x/a.ckpt",), "params.loras[0].name", "unknown LoRA"),
])
def test_bad_loras_are_refused_naming_the_field(entries, model, pipeline, allow, field, words):
    with pytest.raises(InvalidInput) as err:
        check(entries, model, pipeline, allow)
    assert err.value.field == field and words in err.value.message


def test_an_allowlisted_file_for_another_family_is_refused_from_its_keys(tmp_path):
    xl = write_safetensors(tmp_path / "xl.safetensors", ["lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha"])
    sd = write_safetensors(tmp_path / "sd.safetensors", ["unet.down_blocks.1.attn1.to_q.lora_A.weight"])
    allow = (str(xl), str(sd))
    assert check([{"name": str(sd), "scale": 1}], "builtin:tiny-sd", "txt2img", allow)
    with pytest.raises(InvalidInput) as err:
        check([{"name": str(xl), "scale": 1}], "builtin:tiny-sd", "txt2img", allow)
    assert err.value.code == "wrong_family" and "sdxl" in err.value.message


def test_a_checkpoint_named_as_an_adapter_is_refused(tmp_path):
    ckpt = write_safetensors(tmp_path / "ckpt.safetensors", ["model.diffusion_model.input_blocks.0.0.weight"])
    with pytest.raises(InvalidInput) as err:
        check([{"name": str(ckpt)}], "builtin:tiny-sd", "txt2img", (str(ckpt),))
    assert err.value.field == "params.loras[0].name" and err.value.code == "not_a_lora"


@pytest.mark.parametrize("keys, family", [
    (["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"], "sd"),
    (["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"], "sd"),
    (["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight"], "sdxl"),
    (["text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"], "sdxl"),
    (["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"], "sd3"),
    (["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"], "flux"),
])
def test_family_from_tensor_names(keys, family):
    assert loras.family_from_keys(keys) == family


FLUX_FORMATS = {
    "diffusers": ["transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
                  "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight"],
    "kohya": ["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "lora_unet_double_blocks_0_img_attn_qkv.alpha",
              "lora_unet_single_blocks_0_linear1.lora_up.weight"],
    "xlabs": ["double_blocks.0.processor.qkv_lora1.down.weight", "double_blocks.0.processor.proj_lora2.up.weight"],
    "ai-toolkit/bfl": ["diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight",
                       "diffusion_model.single_blocks.1.linear2.lora_B.weight"],
    "kohya, diffusers names": ["lora_transformer_single_transformer_blocks_0_attn_to_k.lora_down.weight"],
}
"""Key names of the Flux LoRA formats diffusers' Flux loader converts (synthetic headers)."""


@pytest.mark.parametrize("layout", list(FLUX_FORMATS))
def test_flux_adapter_files_are_recognised_in_every_format(tmp_path, layout):
    path = write_safetensors(tmp_path / "flux.safetensors", FLUX_FORMATS[layout])
    assert loras.file_family(path) == "flux"  # a LoRA (not a checkpoint), for Flux
    # refused on an SD model at submit, naming the field
    with pytest.raises(InvalidInput) as err:
        check([{"name": str(path)}], "builtin:tiny-sd", "txt2img", (str(path),))
    assert err.value.field == "params.loras[0].name" and err.value.code == "wrong_family"
    assert check([{"name": str(path)}], "builtin:tiny-flux", "txt2img", (str(path),))[0]["name"] == str(path)


def test_tags_round_trip_through_infotext_to_a_submit_body():
    adapters = [{"name": "builtin:tiny-lora", "scale": 0.8}, {"name": "store:ink-style", "scale": -0.35}]
    fields = {"Steps": 4, "Seed": 7, **loras.infotext_fields(adapters, {"builtin:tiny-lora": "0123456789ab"})}
    text = format_infotext(loras.prompt_with_tags("a cat", adapters), "", fields)
    assert text.splitlines()[0] == "a cat <lora:tiny-lora:0.8> <lora:ink-style:-0.35>"
    info = parse_infotext(text)
    assert info["Lora hashes"] == "tiny-lora: 0123456789ab"
    body = submit_body_from_infotext(info)
    assert body["prompts"] == ["a cat"] and body["params"]["loras"] == adapters


def test_an_a1111_prompt_without_ids_names_its_loras_by_tag():
    body = submit_body_from_infotext({"prompt": "x <lora:foo:1>"})
    assert body["prompts"] == ["x"] and body["params"]["loras"] == [{"name": "foo", "scale": 1.0}]


def test_the_a1111_hash_covers_the_tensors_not_the_header(tmp_path):
    a = write_safetensors(tmp_path / "a.safetensors", ["k"])
    raw = a.read_bytes()
    assert loras.a1111_hash(a) == __import__("hashlib").sha256(raw[8 + struct.unpack("<Q", raw[:8])[0]:]).hexdigest()[:12]
    stated = write_safetensors(tmp_path / "b.safetensors", ["k"], {"sshs_model_hash": "ABCDEF0123456789" * 4})
    assert loras.a1111_hash(stated) == "abcdef012345"  # the trainer's own hash, as A1111 prefers it


@pytest.mark.parametrize("flag, entry", [
    ("builtin:tiny-lora", {"name": "builtin:tiny-lora"}),
    ("builtin:tiny-lora:0.8", {"name": "builtin:tiny-lora", "scale": 0.8}),
    ("/loras/ink.safetensors:-1", {"name": "/loras/ink.safetensors", "scale": -1.0}),
    ("ink", {"name": "ink"}),
])
def test_the_cli_lora_flag(flag, entry):
    from argparse import Namespace

    from cli.jobs import build_body

    args = Namespace(model="builtin:tiny-sd", pipeline="txt2img", priority=5, device=None, loras=[flag])
    assert build_body(args, [{"prompt": "x"}])["params"]["loras"] == [entry]


def test_adapter_digests_are_in_the_result_cache_key():
    from sdq.state.resultindex import Maker, cache_key

    maker = Maker("builtin:tiny-sd", "w", "cpu", "fp32", True)
    args = (maker, "", "txt2img", {"steps": 2, "loras": TINY}, "p", "", 1, None, False, None)
    assert cache_key(*args, {"builtin:tiny-lora": "a" * 64}) != cache_key(*args, {"builtin:tiny-lora": "b" * 64})


@pytest.mark.parametrize("header, family", [
    ({"__metadata__": {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}}, "sdxl"),
    ({"__metadata__": {"ss_base_model_version": "sd_v1"}, "lora_te2_x.alpha": {}}, "sd"),  # stated wins
    ({"__metadata__": {"ss_base_model_version": "sdxl_base_v1-0"}}, "sdxl"),
    ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight":
      {"dtype": "F16", "shape": [4, 2048]}}, "sdxl"),  # SDXL's cross-attention width
    ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight":
      {"dtype": "F16", "shape": [4, 768]}}, "sd"),
])
def test_family_from_a_files_header(header, family):
    assert loras.family_from_header(header) == family
