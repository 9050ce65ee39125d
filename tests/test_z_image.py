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
from PIL import Image, ImageDraw

from cli.client import Client
from sdq import families
from sdq.infotext import parse_infotext, submit_body_from_infotext
from sdq.modelinfo import model_info
from sdq.sources import builtin_path
from tests.conftest import wait_job
from tests.test_flux import digests
from tests.test_pipelines import close, pixels, png, result, sketch

CLASSES = {"txt2img": "ZImagePipeline", "img2img": "ZImageImg2ImgPipeline", "inpaint": "ZImageInpaintPipeline"}
"""The diffusers class a direct run uses for each pipeline (what the worker should use too)."""

DEFAULTS = {"guidance_scale": 5.0, "max_sequence_length": 256}
"""What the producer fills in for a Z-Image model (the direct call passes the same)."""

SIZE = {"width": 64, "height": 64}


@pytest.fixture(scope="module")
def zimage(stack_factory) -> Client:
    st = stack_factory("zimage")
    st.worker("w-zimage", "--device", "cpu", "--threads", "1")
    return Client(st.env["SDQ_SERVER"])


@lru_cache(maxsize=None)
def _pipe(models_dir: Path, name: str, task: str):
    import diffusers
    import torch

    folder, extra = builtin_path(models_dir, name), {}
    if name.endswith("-gguf"):  # the transformer from its GGUF file (original layout), as diffusers' docs load one
        extra["transformer"] = diffusers.ZImageTransformer2DModel.from_single_file(
            str(folder / "transformer" / "diffusion_pytorch_model.gguf"), config=str(folder), subfolder="transformer",
            quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=torch.float32), dtype=torch.float32)
    pipe = getattr(diffusers, CLASSES[task]).from_pretrained(folder, dtype=torch.float32, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def direct(models_dir: Path, task: str, prompt: str, seed: int, steps: int = 3, name: str = "tiny-z-image",
           **kw) -> np.ndarray:
    """The image plain diffusers makes with the model's own scheduler (one thread, like the worker)."""
    import torch

    torch.set_num_threads(1)
    out = _pipe(models_dir, name, task)(prompt=prompt, num_inference_steps=steps,
                                        generator=torch.Generator("cpu").manual_seed(seed), **kw)
    return pixels(out.images[0])


def run(client: Client, body: dict) -> dict:
    doc = wait_job(client, client.submit(body)["id"], timeout=240)
    assert doc["state"] == "succeeded", [it.get("error") for it in doc["items"]]
    return doc


@pytest.mark.parametrize("name", ["tiny-z-image", "tiny-z-image-turbo", "tiny-z-image-gguf"])
def test_the_builtins_are_generated_the_same_every_time_and_read_as_z_image(tmp_path, models_dir, name):
    from workers.builtins.registry import BUILDERS

    BUILDERS[name](tmp_path / name)
    built = builtin_path(models_dir, name)
    assert digests(tmp_path / name) == digests(built)
    assert families.detect(built) == families.Z_IMAGE
    assert model_info(f"builtin:{name}").distilled == name.endswith("-turbo")


MASK = Image.new("L", (64, 64), 0)
ImageDraw.Draw(MASK).rectangle((0, 0, 31, 63), fill=255)


@pytest.mark.parametrize("task", list(CLASSES))
def test_each_pipeline_through_the_queue_equals_direct_diffusers(zimage, store, models_dir, task):
    params: dict = {"steps": 3, "seed": 31, **SIZE}
    kw: dict = {**DEFAULTS, **SIZE}
    init = sketch((64, 64), seed=3)
    if task != "txt2img":
        params["init_image"] = zimage.upload(png(init), "init.png")["key"]
        params["strength"] = kw["strength"] = 0.7
        kw["image"] = init
    if task == "inpaint":
        params["mask_image"] = zimage.upload(png(MASK), "mask.png")["key"]
        kw["mask_image"] = MASK
    doc = run(zimage, {"model": "builtin:tiny-z-image", "pipeline": task, "prompts": ["a red lighthouse"],
                       "params": params})
    img = result(store, doc["items"][0])
    assert img.size == (64, 64)
    assert close(pixels(img), direct(models_dir, task, "a red lighthouse", 31, **kw))
    other = direct(models_dir, task, "a red lighthouse", 32, **kw)
    assert np.abs(pixels(img) - other).mean() > 0.5  # the comparison can fail: another seed differs
    item = doc["items"][0]["params"]
    assert (item["scheduler"], item["guidance_scale"], item["max_sequence_length"]) == ("flow_euler", 5.0, 256)
    info = parse_infotext(img.info["parameters"])
    assert info["Model"] == "builtin:tiny-z-image" and info["Pipeline"] == task


def test_guidance_against_a_negative_prompt_reaches_the_pipeline_and_round_trips(zimage, store, models_dir, tmp_path):
    from PIL.PngImagePlugin import PngInfo
    from sd_parsers import ParserManager

    body = {"model": "builtin:tiny-z-image", "prompts": ["a boat"],
            "params": {"steps": 3, "seed": 5, **SIZE, "negative_prompt": "fog", "guidance_scale": 3.0,
                       "max_sequence_length": 128}}
    img = result(store, run(zimage, body)["items"][0])
    kw = {**SIZE, "guidance_scale": 3.0, "max_sequence_length": 128}
    assert close(pixels(img), direct(models_dir, "txt2img", "a boat", 5, negative_prompt="fog", **kw))
    assert np.abs(pixels(img) - direct(models_dir, "txt2img", "a boat", 5, **kw)).mean() > 0.5
    text = img.info["parameters"]
    info = parse_infotext(text)
    assert (info["CFG scale"], info["negative_prompt"], info["Max sequence length"]) == ("3.0", "fog", "128")
    path = tmp_path / "z-image.png"
    meta = PngInfo()
    meta.add_text("parameters", text)
    img.save(path, pnginfo=meta)
    parsed = ParserManager().parse(str(path))  # a third-party reader of A1111 infotext
    assert parsed is not None and "a boat" in parsed.full_prompt and "fog" in parsed.full_negative_prompt
    again = submit_body_from_infotext(info)
    assert again["model"] == "builtin:tiny-z-image" and again["params"]["max_sequence_length"] == 128
    again["params"]["cache"] = False
    assert np.array_equal(pixels(result(store, run(zimage, again)["items"][0])), pixels(img))


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
    resp = zimage.session.post(f"{zimage.server}/v1/jobs", json={"model": model, "pipeline": pipeline,
                                                                  "prompts": ["x"], "params": params})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field, resp.text


ADAPTER = "builtin:tiny-lora-z-image"


@lru_cache(maxsize=None)
def _lora_pipe(models_dir: Path):
    import diffusers
    import torch

    from sdq.loras import ADAPTER_FILE

    pipe = diffusers.ZImagePipeline.from_pretrained(builtin_path(models_dir, "tiny-z-image"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(builtin_path(models_dir, "tiny-lora-z-image")), weight_name=ADAPTER_FILE,
                           adapter_name="direct")
    return pipe


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
    import torch

    def make(adapters: list | None) -> tuple[np.ndarray, dict]:
        params: dict = {"steps": 3, "seed": 21, "cache": False, **SIZE, **({"loras": adapters} if adapters else {})}
        item = run(zimage, {"model": "builtin:tiny-z-image", "prompts": ["a red lighthouse"], "params": params})
        return pixels(result(store, item["items"][0])), item["items"][0]

    plain, first = make(None)
    styled, second = make([{"name": ADAPTER, "scale": 0.8}])
    again, third = make(None)
    assert first["worker"] == second["worker"] == third["worker"]  # one warm worker, the adapter still loaded
    torch.set_num_threads(1)
    pipe = _lora_pipe(models_dir)
    pipe.set_adapters(["direct"], adapter_weights=[0.8])
    want = pixels(pipe("a red lighthouse", num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(21),
                       **DEFAULTS, **SIZE).images[0])
    assert close(styled, want), np.abs(styled - want).max()
    assert np.abs(styled - plain).mean() > 3.0  # visibly changed
    assert np.array_equal(again, plain)  # switched off: the base weights alone, bit for bit
    assert close(plain, direct(models_dir, "txt2img", "a red lighthouse", 21, **DEFAULTS, **SIZE))
    info = parse_infotext(result(store, second).info["parameters"])
    assert info["prompt"].endswith("<lora:tiny-lora-z-image:0.8>") and info["Lora hashes"]


@pytest.mark.parametrize("model, adapter", [("builtin:tiny-z-image", "builtin:tiny-lora-flux"),
                                            ("builtin:tiny-flux", ADAPTER)])
def test_an_adapter_for_another_family_is_refused_naming_the_field(zimage, model, adapter):
    resp = zimage.session.post(f"{zimage.server}/v1/jobs", json={
        "model": model, "prompts": ["x"], "params": {"loras": [{"name": adapter}]}})
    assert resp.status_code == 422, resp.text
    assert (resp.json()["error"]["field"], resp.json()["error"]["code"]) == ("params.loras[0].name", "wrong_family")


GGUF_TOLERANCE = {"max": 4, "mean": 0.5}
"""How far (pixel values /255) the Q8_0 transformer's image may be from the unquantized one's (measured here at
64x64, 4 steps: max 2, mean ~0.23)."""


def test_the_gguf_builtin_makes_an_image_within_tolerance_of_the_unquantized_and_records_it(zimage, store, models_dir):
    body = {"prompts": ["a tower"], "params": {"steps": 4, "seed": 12, **SIZE}}
    plain = run(zimage, {**body, "model": "builtin:tiny-z-image"})["items"][0]
    quant = run(zimage, {**body, "model": "builtin:tiny-z-image-gguf"})["items"][0]
    a, b = pixels(result(store, plain)), pixels(result(store, quant))
    diff = np.abs(a - b)
    assert diff.max() <= GGUF_TOLERANCE["max"] and diff.mean() <= GGUF_TOLERANCE["mean"]
    assert diff.mean() > 0  # the quantized weights were used, not the model's float ones
    assert plain["dtype"] == "fp32" and quant["dtype"] == "fp32 (gguf Q8_0)"
    assert close(b, direct(models_dir, "txt2img", "a tower", 12, steps=4, name="tiny-z-image-gguf", **DEFAULTS, **SIZE))
    assert parse_infotext(result(store, quant).info["parameters"])["Dtype"] == "fp32 (gguf Q8_0)"


def test_a_transformer_file_in_the_original_layout_loads_with_its_config_folder(tmp_path, models_dir):
    """What model sites publish (`z_image_turbo_bf16.safetensors`, `...-Q8_0.gguf`: the transformer alone, original
    key names) loads with a config folder beside it and makes the built-ins' exact images."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from workers.builtins.zimage import original_layout
    from workers.loading import transformer_files

    src = builtin_path(models_dir, "tiny-z-image")
    weights = src / "transformer" / "diffusion_pytorch_model.safetensors"
    save_file(original_layout(load_file(str(weights))), str(tmp_path / "z-image.safetensors"))
    gguf = builtin_path(models_dir, "tiny-z-image-gguf") / "transformer" / "diffusion_pytorch_model.gguf"
    files = {"tiny-z-image": tmp_path / "z-image.safetensors",
             "tiny-z-image-gguf": Path(shutil.copy(gguf, tmp_path / "z-image-Q8_0.gguf"))}
    torch.set_num_threads(1)
    for name, file in files.items():
        config = shutil.copytree(src, file.with_suffix(""))
        (config / "transformer" / weights.name).unlink()
        assert model_info(str(file)).family.name == families.Z_IMAGE
        pipe = transformer_files.load(*transformer_files.transformer_file(file), torch.float32)
        pipe.set_progress_bar_config(disable=True)
        got = pipe(prompt="a tower", num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(4),
                   **DEFAULTS, **SIZE).images[0]
        want = direct(models_dir, "txt2img", "a tower", 4, name=name, **DEFAULTS, **SIZE)
        assert np.array_equal(pixels(got), want)
    need = model_info(str(files["tiny-z-image-gguf"])).memory  # the GGUF file's own size counted, not bf16 weights
    assert need.weights_gb < families.FAMILIES[families.Z_IMAGE].memory.weights_gb


def test_the_hires_fix_runs_z_image_img2img_for_its_second_pass(zimage, store, models_dir):
    doc = run(zimage, {"model": "builtin:tiny-z-image", "prompts": ["a hill"],
                       "params": {"steps": 3, "seed": 3, **SIZE, "hires": {"scale": 2, "strength": 0.5, "steps": 4}}})
    img = result(store, doc["items"][0])
    assert img.size == (128, 128)
    low = Image.fromarray(direct(models_dir, "txt2img", "a hill", 3, **DEFAULTS, **SIZE).astype("uint8"))
    want = direct(models_dir, "img2img", "a hill", 3, steps=4, image=low.resize((128, 128), Image.Resampling.LANCZOS),
                  strength=0.5, width=128, height=128, **DEFAULTS)
    assert np.abs(pixels(img) - want).max() <= 2
