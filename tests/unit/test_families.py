"""The family table and the detector: a model's family read from its model_index.json or its file's keys."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from sdq import families
from sdq.memory import Memory, load_cast
from sdq.modelinfo import TINY, model_info
from sdq.families import SD, SD3, SDXL, UnknownFamily


def folder(tmp_path: Path, class_name: str, name: str = "m") -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "model_index.json").write_text(json.dumps({"_class_name": class_name, "unet": ["diffusers", "X"]}))
    return path


def safetensors(path: Path, keys: list[str]) -> Path:
    """A real safetensors file: a JSON header naming empty tensors (no torch needed)."""
    header = {k: {"dtype": "F16", "shape": [0], "data_offsets": [0, 0]} for k in keys}
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


SDXL_KEYS = ["conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
             "conditioner.embedders.1.model.text_projection", "model.diffusion_model.input_blocks.0.0.weight"]
SD3_KEYS = ["model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight",
            "model.diffusion_model.x_embedder.proj.weight", "text_encoders.clip_l.transformer.text_model.x"]
SD_KEYS = ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.text_model.x",
           "first_stage_model.decoder.conv_in.weight"]
FLUX_KEYS = ["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"]


@pytest.mark.parametrize("class_name, want", [
    ("StableDiffusionPipeline", SD), ("StableDiffusionUpscalePipeline", families.SD_UPSCALE),
    ("StableDiffusionXLPipeline", SDXL), ("StableDiffusionXLImg2ImgPipeline", SDXL),
    ("StableDiffusion3Pipeline", SD3),
])
def test_a_folders_model_index_picks_the_family(tmp_path, class_name, want):
    assert families.detect(folder(tmp_path, class_name)) == want


@pytest.mark.parametrize("keys, want", [(SDXL_KEYS, SDXL), (SD3_KEYS, SD3), (SD_KEYS, SD)])
def test_a_single_files_tensor_names_pick_the_family(tmp_path, keys, want):
    assert families.detect(safetensors(tmp_path / "model.safetensors", keys)) == want


def test_sdxl_files_hold_the_sd_marker_too_and_still_read_as_sdxl(tmp_path):
    assert any(k.startswith(families.FAMILIES[SD].file_keys) for k in SDXL_KEYS)
    assert families.from_keys(list(reversed(SDXL_KEYS))) == SDXL


def test_a_config_folder_beside_a_file_decides_over_its_keys(tmp_path):
    file = safetensors(tmp_path / "m.safetensors", SD_KEYS)
    folder(tmp_path, "StableDiffusionXLPipeline", name="m")
    assert families.detect(file) == SDXL


def test_families_sdq_does_not_run_are_named(tmp_path):
    with pytest.raises(UnknownFamily, match="Flux.1 Fill"):
        families.detect(folder(tmp_path, "FluxFillPipeline"))
    with pytest.raises(UnknownFamily, match="Flux.2"):
        families.detect(folder(tmp_path, "Flux2KleinKVPipeline", name="f2"))  # Flux.2 runs; not its KV-cache class
    with pytest.raises(UnknownFamily, match="'MyPipeline'"):
        families.from_class_name("MyPipeline")
    with pytest.raises(UnknownFamily, match="match no family"):
        families.from_keys(["foo.weight"])


def test_unreadable_models_raise_unknown_family_with_the_reason(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(UnknownFamily, match="header length"):
        families.detect(tmp_path / "bad.safetensors")
    (tmp_path / "old.ckpt").write_bytes(b"pickle")
    with pytest.raises(UnknownFamily, match="config folder"):
        families.detect(tmp_path / "old.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownFamily, match="model_index.json"):
        families.detect(tmp_path / "empty")


def test_memory_need_grows_with_pixels_and_doubles_in_fp32():
    mem = families.FAMILIES[SDXL].memory
    assert mem.need_gb("fp16", 1024 * 1024) == pytest.approx(mem.weights_gb + mem.gb_per_mpx)
    assert mem.need_gb("bf16", 512 * 512) == mem.need_gb("fp16", 512 * 512) < mem.need_gb("fp16", 1024 * 1024)
    assert mem.need_gb("fp32", 1024 * 1024) == pytest.approx(2 * mem.need_gb("fp16", 1024 * 1024))
    assert Memory.from_record(mem.record()) == mem
    with pytest.raises(ValueError, match="'int8'"):
        mem.need_gb("int8", 1)
    # the published models' order of size: SD < SDXL < SD3 (with its T5 encoder)
    need = {name: f.memory.need_gb("fp16", 1024 * 1024) for name, f in families.FAMILIES.items()}
    assert need[SD] < need[SDXL] < need[SD3]


# Peak RSS (GiB) of one fresh process loading a full-size built-in and making one image at its own size
# with one DDIM step, low-memory mode off (`python -m bench.realsize`, bench/RESULTS.md, docs/MODELS.md):
# (machine, model, dtype, side, peak). bf16 loads fp32 files and casts them, so its peak is at load.
MEASURED_PEAKS = [
    ("Xeon, AMX", "sd15-shaped", "fp32", 512, 5.38),
    ("Xeon, AMX", "sd15-shaped", "bf16", 512, 5.64),
    ("Xeon, AMX", "sd15-shaped", "bf16", 256, 5.47),  # bf16 compile
    ("EPYC, avx2", "sd15-shaped", "fp32", 512, 5.50),
    ("EPYC, avx2", "sd15-shaped", "bf16", 512, 5.64),  # the load alone (bf16 is emulated there)
    ("EPYC, avx2", "sd15-shaped", "fp32", 768, 6.52),
    ("EPYC, avx2", "sd2-768-shaped", "fp32", 768, 7.48),
    ("EPYC, avx2", "sd2-768-shaped", "bf16", 768, 6.07),  # the load alone
]


@pytest.mark.parametrize("machine,model,dtype,side,peak", MEASURED_PEAKS)
def test_the_sd_familys_advertised_need_covers_what_a_cpu_worker_measured(machine, model, dtype, side, peak):
    """A CPU worker on the SD family's need never takes an item it has no memory for, nor refuses one
    with room to spare: the need is at least the measured peak and at most 20% above it."""
    from sdq.models import BUILTIN_FAMILIES

    info = model_info(f"builtin:{model}")
    assert info.family.name == BUILTIN_FAMILIES[f"builtin:{model}"] == SD
    need = info.memory.need_gb(dtype, side * side, load_cast("cpu", dtype))
    assert peak <= need <= 1.2 * peak, (machine, model, dtype, side, need)


def test_a_cast_at_load_counts_only_on_a_cpu_and_only_when_it_peaks_above_the_steps():
    mem = families.FAMILIES[SD].memory
    assert load_cast("cpu", "bf16") == "fp32" and load_cast("cpu", "fp32") is None
    assert load_cast("cuda:0", "fp16") is None  # the cast is in host RAM, not the GPU's memory
    assert mem.need_gb("bf16", 512 * 512, "fp32") == round((1 + 2 * mem.largest_share) * mem.weights_gb, 2)
    assert mem.need_gb("fp32", 512 * 512, "fp32") == mem.need_gb("fp32", 512 * 512)  # no cast
    huge = 16384 * 16384  # the steps' working memory outgrows the load
    assert mem.need_gb("bf16", huge, "fp32") == mem.need_gb("bf16", huge)
    with pytest.raises(ValueError, match="'int4'"):
        mem.need_gb("bf16", 1, "int4")
    old = {"weights_gb": 2.2, "gb_per_mpx": 2.5}  # a job recorded before largest_share: all the weights count
    assert Memory.from_record(old).largest_share == 1.0


def test_every_family_names_its_defaults_consistently():
    for fam in families.FAMILIES.values():
        low, high, default = fam.guidance
        assert low <= default <= high
        assert fam.default_side % fam.size_multiple == 0
        assert fam.schedulers is None or fam.default_scheduler in fam.schedulers
        assert fam.schedulers is not None or fam.default_scheduler not in families.FLOW_SCHEDULERS


def test_builtins_know_their_family_and_need_little_memory(tmp_path):
    from sdq.models import BUILTIN_FAMILIES, BUILTIN_MODELS

    assert set(BUILTIN_FAMILIES) == set(BUILTIN_MODELS) and set(BUILTIN_FAMILIES.values()) <= set(families.FAMILIES)
    assert BUILTIN_MODELS["builtin:tiny-sdxl"] == ("txt2img", "img2img", "inpaint")
    assert BUILTIN_MODELS["builtin:tiny-sd3"] == ("txt2img", "img2img")
    info = model_info("builtin:tiny-sdxl")
    assert info.family.name == SDXL and info.memory == TINY and info.default_side == 256
    assert model_info("builtin:tiny-sd").default_side == 512
    assert model_info("stabilityai/stable-diffusion-xl-base-1.0").family is None
    local = model_info(str(folder(tmp_path, "StableDiffusion3Pipeline")))
    assert local.family.name == SD3 and local.memory == families.FAMILIES[SD3].memory and local.default_side == 1024


def test_family_parameters_are_declared_once_and_owned_by_a_family():
    from sdq import pipelines

    owned = [name for fam in families.FAMILIES.values() for name in fam.params]
    assert sorted(set(owned)) == sorted(pipelines.FAMILY_PARAMS)  # each declared parameter has a family
    assert not set(pipelines.FAMILY_PARAMS) & {p for s in pipelines.SPECS.values() for p in s.param_names}


def test_family_parameters_become_the_diffusers_keyword_arguments():
    from sdq.pipelines import family_kwargs

    size = {"width": 64, "height": 48}
    assert family_kwargs(SD, {**size, "max_sequence_length": 77}) == {}
    assert family_kwargs(SDXL, size) == {}
    assert family_kwargs(SDXL, {**size, "original_width": 256}) == {"original_size": (48, 256)}
    assert family_kwargs(SDXL, {**size, "crop_left": 8}) == {"crops_coords_top_left": (0, 8)}
    assert family_kwargs(SD3, {**size, "max_sequence_length": 77}) == {**size, "max_sequence_length": 77}


def test_the_text_to_image_families_have_txt2img_and_img2img_classes():
    from sdq import pipelines

    for name in (families.SD, families.SDXL, families.SD3):
        assert pipelines.base_class(name) in families.FAMILIES[name].class_names
        assert pipelines.spec("img2img").class_for(name) in families.FAMILIES[name].class_names
    # and each spec class belongs to the family the table files it under
    for spec in pipelines.SPECS.values():
        for family, cls in spec.classes.items():
            assert families.from_class_name(cls) == pipelines.family_of_class(cls) == family


def test_the_web_forms_scheduler_list_is_the_tables():
    import re

    from sdq import pipelines

    js = (Path(__file__).resolve().parents[2] / "producer" / "static" / "submit.js").read_text(encoding="utf-8")
    listed = re.search(r"const SCHEDULERS = \[(.*?)\];", js).group(1)
    assert re.findall(r'"(\w+)"', listed) == list(pipelines.SCHEDULERS)
