"""Z-Image through the real queue on the tiny built-ins: txt2img, img2img and inpaint each equal a direct
diffusers call of the same class with the same seed; guidance against a negative prompt reaches the pipeline
and round-trips through infotext (read by sd-parsers too); a Turbo-type model gets its distilled defaults;
bad Z-Image requests (another family's parameter, a side that is not a multiple of 16) are refused at submit
naming the field; a LoRA adapter (`builtin:tiny-lora-z-image`) changes the image as diffusers' loader does."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from cli.client import Client
from sdq import families
from sdq.infotext import parse_infotext
from sdq.modelinfo import model_info
from sdq.sources import builtin_path
from tests.support.families import (SIZE, assert_equals_direct, assert_recorded, assert_refused, config_beside, digests,
                                    file_pipe, generate, gguf_pair, gguf_transformer, hires_want, job_inputs, lora_pipe,
                                    negative_round_trip, one_worker, plain_styled_again, run, with_lora)
from tests.test_pipelines import close, pixels, result

CLASSES = {"txt2img": "ZImagePipeline", "img2img": "ZImageImg2ImgPipeline", "inpaint": "ZImageInpaintPipeline"}
"""The diffusers class a direct run uses for each pipeline (what the worker should use too)."""

DEFAULTS = {"guidance_scale": 5.0, "max_sequence_length": 256}
"""What the producer fills in for a Z-Image model (the direct call passes the same)."""


@pytest.fixture(scope="module")
def zimage(stack_factory) -> Client:
    return Client(one_worker(stack_factory, "zimage", "w-zimage").env["SDQ_SERVER"])


@lru_cache(maxsize=None)
def _pipe(models_dir: Path, name: str, task: str):
    import diffusers
    import torch

    folder = builtin_path(models_dir, name)  # a GGUF transformer is in the original layout
    extra = {"transformer": gguf_transformer("ZImageTransformer2DModel", folder)} if name.endswith("-gguf") else {}
    pipe = getattr(diffusers, CLASSES[task]).from_pretrained(folder, dtype=torch.float32, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def direct(models_dir: Path, task: str, prompt: str, seed: int, steps: int = 3, name: str = "tiny-z-image",
           **kw) -> np.ndarray:
    """The image plain diffusers makes with the model's own scheduler (one thread, like the worker)."""
    return generate(_pipe(models_dir, name, task), prompt, seed, steps, **kw)


@pytest.mark.parametrize("name", ["tiny-z-image", "tiny-z-image-turbo", "tiny-z-image-gguf"])
def test_the_builtins_are_generated_the_same_every_time_and_read_as_z_image(tmp_path, models_dir, name):
    from workers.builtins.registry import BUILDERS

    BUILDERS[name](tmp_path / name)
    built = builtin_path(models_dir, name)
    assert digests(tmp_path / name) == digests(built)
    assert families.detect(built) == families.Z_IMAGE
    assert model_info(f"builtin:{name}").distilled == name.endswith("-turbo")


@pytest.mark.parametrize("task", list(CLASSES))
def test_each_pipeline_through_the_queue_equals_direct_diffusers(zimage, store, models_dir, task):
    params, kw = job_inputs(zimage, task, DEFAULTS)
    doc = run(zimage, {"model": "builtin:tiny-z-image", "pipeline": task, "prompts": ["a red lighthouse"],
                       "params": params})
    img = assert_equals_direct(store, doc, lambda seed: direct(models_dir, task, "a red lighthouse", seed, **kw))
    assert_recorded(doc, img, "builtin:tiny-z-image", task, 5.0)


def test_guidance_against_a_negative_prompt_reaches_the_pipeline_and_round_trips(zimage, store, models_dir, tmp_path):
    body = {"model": "builtin:tiny-z-image", "prompts": ["a boat"],
            "params": {"steps": 3, "seed": 5, **SIZE, "negative_prompt": "fog", "guidance_scale": 3.0,
                       "max_sequence_length": 128}}
    kw = {**SIZE, "guidance_scale": 3.0, "max_sequence_length": 128}
    info, again = negative_round_trip(zimage, store, body, tmp_path / "z-image.png",
                                      direct(models_dir, "txt2img", "a boat", 5, negative_prompt="fog", **kw),
                                      direct(models_dir, "txt2img", "a boat", 5, **kw))
    assert (info["CFG scale"], info["negative_prompt"], info["Max sequence length"]) == ("3.0", "fog", "128")
    assert again["model"] == "builtin:tiny-z-image" and again["params"]["max_sequence_length"] == 128


def test_a_turbo_type_model_gets_its_distilled_defaults(zimage, store, models_dir):
    doc = run(zimage, {"model": "builtin:tiny-z-image-turbo", "prompts": ["a fox"], "params": {"seed": 8, **SIZE}})
    item = doc["items"][0]["params"]
    assert (item["steps"], item["guidance_scale"], item["max_sequence_length"]) == (8, 0.0, 256)
    want = direct(models_dir, "txt2img", "a fox", 8, steps=8, name="tiny-z-image-turbo", guidance_scale=0.0,
                  max_sequence_length=256, **SIZE)
    assert close(pixels(result(store, doc["items"][0])), want)


@pytest.mark.parametrize("model, pipeline, params, field", [
    ("builtin:tiny-z-image", "txt2img", {"width": 72}, "params.width"),
    ("builtin:tiny-z-image", "img2img", {"height": 40, "init_image": "uploads/x.png"}, "params.height"),
    ("builtin:tiny-z-image", "txt2img", {"true_cfg_scale": 4.0}, "params.true_cfg_scale"),
    ("builtin:tiny-z-image", "txt2img", {"original_width": 512}, "params.original_width"),
    ("builtin:tiny-z-image", "txt2img", {"max_sequence_length": 1024}, "params.max_sequence_length"),
    ("builtin:tiny-z-image", "txt2img", {"scheduler": "dpmpp_2m"}, "params.scheduler"),
    ("builtin:tiny-z-image", "edit", {"init_image": "uploads/x.png"}, "pipeline"),
    ("builtin:tiny-z-image-turbo", "txt2img", {"guidance_scale": 3.5}, "params.guidance_scale"),
    ("builtin:tiny-z-image-turbo", "txt2img", {"negative_prompt": "fog"}, "params.negative_prompt"),
])
def test_bad_z_image_requests_are_refused_naming_the_field(zimage, model, pipeline, params, field):
    assert_refused(zimage, {"model": model, "pipeline": pipeline, "prompts": ["x"], "params": params}, field)


ADAPTER = "builtin:tiny-lora-z-image"


def test_the_z_image_adapter_is_the_same_bytes_every_time_and_reads_as_z_image(models_dir, tmp_path):
    from sdq import loras
    from workers.builtins.registry import BUILDERS, ensure_builtin

    BUILDERS["tiny-lora-z-image"](tmp_path / "a")
    built = ensure_builtin(models_dir, "tiny-lora-z-image") / loras.ADAPTER_FILE
    assert (tmp_path / "a" / loras.ADAPTER_FILE).read_bytes() == built.read_bytes()
    assert loras.file_family(built) == families.Z_IMAGE == loras.adapter_family(ADAPTER)
    keys = loras.safetensors_keys(built)
    assert all(k.startswith("transformer.") for k in keys) and any("noise_refiner" in k for k in keys)


def test_a_z_image_lora_changes_the_image_like_diffusers_and_the_next_job_without_it_does_not(zimage, store,
                                                                                               models_dir):
    body = {"model": "builtin:tiny-z-image", "prompts": ["a red lighthouse"],
            "params": {"steps": 3, "seed": 21, **SIZE}}
    first, second, third = plain_styled_again(zimage, body, [{"name": ADAPTER, "scale": 0.8}])
    plain, styled, again = (pixels(result(store, item)) for item in (first, second, third))
    assert first["worker"] == second["worker"] == third["worker"]  # one warm worker, the adapter still loaded
    pipe = lora_pipe("ZImagePipeline", builtin_path(models_dir, "tiny-z-image"),
                     builtin_path(models_dir, "tiny-lora-z-image"))
    want = with_lora(pipe, 0.8, "a red lighthouse", 21, **DEFAULTS, **SIZE)
    assert close(styled, want), np.abs(styled - want).max()
    assert np.abs(styled - plain).mean() > 3.0  # visibly changed
    assert np.array_equal(again, plain)  # switched off: the base weights alone, bit for bit
    assert close(plain, direct(models_dir, "txt2img", "a red lighthouse", 21, **DEFAULTS, **SIZE))
    info = parse_infotext(result(store, second).info["parameters"])
    assert info["prompt"].endswith("<lora:tiny-lora-z-image:0.8>") and info["Lora hashes"]


@pytest.mark.parametrize("model, adapter", [("builtin:tiny-z-image", "builtin:tiny-lora-flux"),
                                            ("builtin:tiny-flux", ADAPTER)])
def test_an_adapter_for_another_family_is_refused_naming_the_field(zimage, model, adapter):
    error = assert_refused(zimage, {"model": model, "prompts": ["x"], "params": {"loras": [{"name": adapter}]}},
                           "params.loras[0].name")
    assert error["code"] == "wrong_family"


GGUF_TOLERANCE = {"max": 4, "mean": 0.5}
"""How far (pixel values /255) the Q8_0 transformer's image may be from the unquantized one's (measured here at
64x64, 4 steps: max 2, mean ~0.23)."""


def test_the_gguf_builtin_makes_an_image_within_tolerance_of_the_unquantized_and_records_it(zimage, store, models_dir):
    body = {"prompts": ["a tower"], "params": {"steps": 4, "seed": 12, **SIZE}}
    _, _, b = gguf_pair(zimage, store, body, "builtin:tiny-z-image", "builtin:tiny-z-image-gguf", GGUF_TOLERANCE)
    assert close(b, direct(models_dir, "txt2img", "a tower", 12, steps=4, name="tiny-z-image-gguf", **DEFAULTS, **SIZE))


def test_a_transformer_file_in_the_original_layout_loads_with_its_config_folder(tmp_path, models_dir):
    """What model sites publish (`z_image_turbo_bf16.safetensors`, `...-Q8_0.gguf`: the transformer alone, original
    key names) loads with a config folder beside it and makes the built-ins' exact images."""
    import shutil

    from safetensors.torch import load_file, save_file

    from workers.builtins.zimage import original_layout

    src = builtin_path(models_dir, "tiny-z-image")
    weights = src / "transformer" / "diffusion_pytorch_model.safetensors"
    save_file(original_layout(load_file(str(weights))), str(tmp_path / "z-image.safetensors"))
    gguf = builtin_path(models_dir, "tiny-z-image-gguf") / "transformer" / "diffusion_pytorch_model.gguf"
    files = {"tiny-z-image": tmp_path / "z-image.safetensors",
             "tiny-z-image-gguf": Path(shutil.copy(gguf, tmp_path / "z-image-Q8_0.gguf"))}
    for name, file in files.items():
        config_beside(src, file.with_suffix(""), weights.name)
        assert model_info(str(file)).family.name == families.Z_IMAGE
        got = generate(file_pipe(file), "a tower", 4, **DEFAULTS, **SIZE)
        want = direct(models_dir, "txt2img", "a tower", 4, name=name, **DEFAULTS, **SIZE)
        assert np.array_equal(got, want)
    need = model_info(str(files["tiny-z-image-gguf"])).memory  # the GGUF file's own size counted, not bf16 weights
    assert need.weights_gb < families.FAMILIES[families.Z_IMAGE].memory.weights_gb


def test_the_hires_fix_runs_z_image_img2img_for_its_second_pass(zimage, store, models_dir):
    doc = run(zimage, {"model": "builtin:tiny-z-image", "prompts": ["a hill"],
                       "params": {"steps": 3, "seed": 3, **SIZE, "hires": {"scale": 2, "strength": 0.5, "steps": 4}}})
    img = result(store, doc["items"][0])
    assert img.size == (128, 128)
    want = hires_want(lambda *a, **kw: direct(models_dir, *a, **kw), DEFAULTS)
    assert np.abs(pixels(img) - want).max() <= 2
