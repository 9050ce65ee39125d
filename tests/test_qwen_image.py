"""Qwen-Image through the real queue on the tiny built-in: txt2img, img2img and inpaint each equal a direct diffusers
call of the same class with the same seed; true CFG with a negative prompt reaches the pipeline and round-trips
through infotext (read by sd-parsers too); another family's parameter, a side off the size multiple and `edit` on a
plain Qwen-Image model are refused at submit naming the field; a worker without the memory of a full-size model
never takes its item; previews stream; `builtin:tiny-lora-qwen-image` (its family read from its tensor names)
changes the image as diffusers' own LoRA loader does. `edit` on a Qwen-Image-Edit model runs where torchvision is
installed (see `test_edit_on_an_edit_model_equals_direct_diffusers`)."""
from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from cli.client import Client
from sdq import families
from sdq.infotext import parse_infotext
from sdq.sources import builtin_path
from tests.conftest import wait_job
from tests.support.families import (SIZE, assert_equals_direct, assert_recorded, assert_refused, config_beside, digests,
                                    file_pipe, generate, hires_want, job_inputs, lora_pipe, negative_round_trip,
                                    one_worker, plain_styled_again, run, with_lora)
from tests.support.memory_gate import left_queued_for_memory
from tests.test_pipelines import close, pixels, png, result, sketch

MODEL = "builtin:tiny-qwen-image"
CLASSES = {"txt2img": "QwenImagePipeline", "img2img": "QwenImageImg2ImgPipeline",
           "inpaint": "QwenImageInpaintPipeline"}
"""The diffusers class a direct run uses for each pipeline (what the worker should use too)."""

DEFAULTS = {"max_sequence_length": 256}
"""What the producer fills in for a Qwen-Image model that changes the call (the direct call passes the same)."""


@pytest.fixture(scope="module")
def local_qwen(tmp_path_factory, models_dir) -> str:
    """A copy of tiny-qwen-image as a local diffusers folder: for all the producer knows, a full-size Qwen-Image."""
    return str(shutil.copytree(builtin_path(models_dir, "tiny-qwen-image"), tmp_path_factory.mktemp("qwen") / "m"))


@pytest.fixture(scope="module")
def qwen_stack(stack_factory, local_qwen):
    return one_worker(stack_factory, "qwen", "w-qwen", env={"SDQ_MODELS": local_qwen})


@pytest.fixture(scope="module")
def qwen(qwen_stack) -> Client:
    return Client(qwen_stack.env["SDQ_SERVER"])


@lru_cache(maxsize=None)
def _pipe(folder: Path, task: str):
    import diffusers
    import torch

    base = diffusers.DiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe = base if task in ("txt2img", "edit") else getattr(diffusers, CLASSES[task]).from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def direct(folder: Path, task: str, prompt: str, seed: int, steps: int = 3, **kw) -> np.ndarray:
    """The image plain diffusers makes with the model's own scheduler (one thread, like the worker)."""
    return generate(_pipe(folder, task), prompt, seed, steps, **kw)


def test_the_builtin_is_generated_the_same_every_time_and_reads_as_qwen_image(tmp_path, models_dir):
    from workers.builtins.registry import BUILDERS

    BUILDERS["tiny-qwen-image"](tmp_path / "again")
    built = builtin_path(models_dir, "tiny-qwen-image")
    assert digests(tmp_path / "again") == digests(built)
    assert families.detect(built) == families.QWEN_IMAGE


@pytest.mark.parametrize("task", list(CLASSES))
def test_each_pipeline_through_the_queue_equals_direct_diffusers(qwen, store, models_dir, task):
    folder = builtin_path(models_dir, "tiny-qwen-image")
    params, kw = job_inputs(qwen, task, DEFAULTS)
    doc = run(qwen, {"model": MODEL, "pipeline": task, "prompts": ["a red lighthouse"], "params": params})
    img = assert_equals_direct(store, doc, lambda seed: direct(folder, task, "a red lighthouse", seed, **kw))
    assert_recorded(doc, img, MODEL, task, 0.0)


def test_true_cfg_with_a_negative_prompt_reaches_the_pipeline_and_round_trips(qwen, store, models_dir, tmp_path):
    folder = builtin_path(models_dir, "tiny-qwen-image")
    body = {"model": MODEL, "prompts": ["a boat"],
            "params": {"steps": 3, "seed": 5, **SIZE, "negative_prompt": "fog", "true_cfg_scale": 4.0}}
    kw = {**DEFAULTS, **SIZE}
    info, again = negative_round_trip(qwen, store, body, tmp_path / "qwen.png",
                                      direct(folder, "txt2img", "a boat", 5, negative_prompt="fog", true_cfg_scale=4.0,
                                             **kw),
                                      direct(folder, "txt2img", "a boat", 5, **kw))  # CFG changed it
    assert (info["True CFG scale"], info["negative_prompt"]) == ("4.0", "fog")
    assert again["params"]["true_cfg_scale"] == 4.0 and again["model"] == MODEL


@pytest.mark.parametrize("pipeline, params, field", [
    ("txt2img", {"original_width": 512}, "params.original_width"),  # SDXL's
    ("txt2img", {"width": 72}, "params.width"),
    ("txt2img", {"height": 120}, "params.height"),
    ("txt2img", {"guidance_scale": 3.5}, "params.guidance_scale"),
    ("txt2img", {"negative_prompt": "fog"}, "params.negative_prompt"),
    ("txt2img", {"true_cfg_scale": 4.0}, "params.true_cfg_scale"),
    ("txt2img", {"max_sequence_length": 600}, "params.max_sequence_length"),
    ("txt2img", {"loras": [{"name": "builtin:tiny-lora"}]}, "params.loras[0].name"),
    ("edit", {"init_image": "uploads/x.png"}, "pipeline"),
])
def test_bad_qwen_requests_are_refused_naming_the_field(qwen, pipeline, params, field):
    assert_refused(qwen, {"model": MODEL, "pipeline": pipeline, "prompts": ["x"], "params": params}, field)


def test_a_worker_without_the_memory_for_a_full_size_qwen_image_never_takes_its_item(qwen, qwen_stack, local_qwen):
    """The local folder is, for all the producer knows, a full-size Qwen-Image (~107 GB in fp32 at 64x64): more
    than this CPU worker has; it leaves the item queued, and the built-in runs meanwhile."""
    doc = left_queued_for_memory(qwen, qwen_stack, "w-qwen", families.QWEN_IMAGE,
                                 {"model": local_qwen, "prompts": ["heavy"], "params": {"steps": 2, **SIZE}},
                                 {"model": MODEL, "prompts": ["light"], "params": {"steps": 2, **SIZE}})
    assert doc["params"]["steps"] == 2 and doc["params"]["width"] == 64  # read as Qwen-Image: its checks applied
    qwen.cancel(doc["id"])


@pytest.fixture(scope="module")
def edit_model(tmp_path_factory) -> Path:
    """tiny Qwen-Image-Edit (`workers.builtins.qwen.build_tiny_qwen_image_edit`) as a local folder; its processor
    needs torchvision (transformers' Qwen2VLProcessor builds its video processor even for images)."""
    pytest.importorskip("torchvision", reason="Qwen-Image-Edit's Qwen2VLProcessor needs torchvision")
    from workers.builtins.qwen import build_tiny_qwen_image_edit

    path = tmp_path_factory.mktemp("qwen-edit") / "m"
    build_tiny_qwen_image_edit(path)
    return path


def test_edit_on_an_edit_model_equals_direct_diffusers(stack_factory, store, edit_model):
    st = one_worker(stack_factory, "qwen-edit", "w-qwen-edit", env={"SDQ_MODELS": str(edit_model)})
    client = Client(st.env["SDQ_SERVER"])
    init = sketch((64, 64), seed=3)
    params = {"steps": 3, "seed": 31, **SIZE, "init_image": client.upload(png(init), "init.png")["key"]}
    refused = client.session.post(f"{client.server}/v1/jobs", json={"model": str(edit_model), "prompts": ["x"]})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "pipeline"  # txt2img: not an Edit job
    doc = run(client, {"model": str(edit_model), "pipeline": "edit", "prompts": ["make the sky red"], "params": params})
    img = result(store, doc["items"][0])
    kw = {**DEFAULTS, **SIZE, "image": init}
    assert img.size == (64, 64)
    assert close(pixels(img), direct(edit_model, "edit", "make the sky red", 31, **kw))
    assert np.abs(pixels(img) - direct(edit_model, "edit", "make the sky red", 32, **kw)).mean() > 0.5
    assert parse_infotext(img.info["parameters"])["Pipeline"] == "edit"


def test_previews_of_a_qwen_image_item_stream_while_it_is_made(qwen, store, models_dir):
    """Qwen-Image's latents are packed 2x2 and, unpacked, have a frame axis (its VAE is a video VAE): the preview
    hook turns them into one 16-channel frame for the tiny decoder; the image is the one made without previews."""
    from tests.test_previews import _decoded

    body = {"model": MODEL, "prompts": ["a castle"], "params": {"steps": 30, "seed": 9, **SIZE, "cache": False}}
    job = qwen.submit({**body, "params": {**body["params"], "preview": {"interval": 0.25}}})
    previews = [data for name, data in qwen.events(job["id"]) if name == "item.preview"]
    doc = wait_job(qwen, job["id"])
    assert doc["state"] == "succeeded", [it.get("error") for it in doc["items"]]
    assert previews and all(_decoded(d).size == (64, 64) for d in previews)
    want = direct(builtin_path(models_dir, "tiny-qwen-image"), "txt2img", "a castle", 9, steps=30, **DEFAULTS, **SIZE)
    assert close(pixels(result(store, doc["items"][0])), want)


ADAPTER = "builtin:tiny-lora-qwen-image"


def test_the_qwen_adapter_is_the_same_bytes_every_time_and_its_family_is_read_from_its_names(models_dir, tmp_path):
    from sdq import loras
    from workers.builtins.registry import BUILDERS, ensure_builtin

    BUILDERS["tiny-lora-qwen-image"](tmp_path / "a")
    built = ensure_builtin(models_dir, "tiny-lora-qwen-image") / loras.ADAPTER_FILE
    assert (tmp_path / "a" / loras.ADAPTER_FILE).read_bytes() == built.read_bytes()
    header = loras.read_header(built)
    assert "modelspec.architecture" not in header.get("__metadata__", {})  # no metadata to go by: the names say it
    assert loras.file_family(built) == families.QWEN_IMAGE == loras.adapter_family(ADAPTER)


def test_a_qwen_lora_changes_the_image_like_diffusers_and_the_next_job_without_it_does_not(qwen, store, models_dir):
    base = {"model": MODEL, "prompts": ["a red lighthouse"], "params": {"steps": 3, "seed": 31, **SIZE}}
    plain, styled, again = plain_styled_again(qwen, base, [{"name": ADAPTER, "scale": 0.75}])
    assert plain["worker"] == styled["worker"] == again["worker"]  # one warm worker, the adapter still loaded
    pipe = lora_pipe("QwenImagePipeline", builtin_path(models_dir, "tiny-qwen-image"),
                     builtin_path(models_dir, "tiny-lora-qwen-image"))
    want = with_lora(pipe, 0.75, "a red lighthouse", 31, **DEFAULTS, **SIZE)
    got = pixels(result(store, styled))
    assert close(got, want), np.abs(got - want).max()
    assert np.abs(got - pixels(result(store, plain))).mean() > 1.0  # visibly changed (measured ~2 /255 at 0.75)
    assert np.array_equal(pixels(result(store, again)), pixels(result(store, plain)))  # switched off, bit for bit
    text = result(store, styled).info["parameters"]
    assert text.splitlines()[0] == "a red lighthouse <lora:tiny-lora-qwen-image:0.75>"


def test_the_qwen_adapter_on_another_family_is_refused_naming_the_field(qwen):
    job = {"model": "builtin:tiny-sd", "prompts": ["x"], "params": {"loras": [{"name": ADAPTER}]}}
    err = assert_refused(qwen, job, "params.loras[0].name", timeout=10)
    assert err["code"] == "wrong_family" and "qwen-image" in err["message"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, models_dir) -> dict[str, Path]:
    """tiny-qwen-image's transformer alone as a `.safetensors` file (diffusers' names, as Qwen-Image transformer
    files are published) and as a GGUF file (Q8_0 where the block size fits), each with a config folder beside it
    holding the other components."""
    from safetensors.torch import load_file

    from workers.loading.transformer_files import write_gguf

    d = tmp_path_factory.mktemp("qwen-files")
    src = builtin_path(models_dir, "tiny-qwen-image")
    weights = src / "transformer" / "diffusion_pytorch_model.safetensors"
    out = {}
    for target in ("qwen-image.safetensors", "qwen-image-Q8_0.gguf"):
        config_beside(src, d / Path(target).stem, weights.name)
        out[target] = d / target
    shutil.copy(weights, out["qwen-image.safetensors"])
    write_gguf(load_file(str(weights)), out["qwen-image-Q8_0.gguf"])
    return out


GGUF_TOLERANCE = {"max": 8, "mean": 1.0}
"""How far (pixel values /255) the Q8_0 transformer's image may be from the unquantized one's: measured here max 4,
mean ~0.39 at 64x64, 3 steps (another seed: mean ~13)."""


def test_a_transformer_file_or_gguf_loads_with_its_config_folder(files, models_dir):
    from sdq.modelinfo import model_info
    from workers.loading import transformer_files

    want = direct(builtin_path(models_dir, "tiny-qwen-image"), "txt2img", "a tower", 4, **DEFAULTS, **SIZE)
    for name, file in files.items():
        assert model_info(str(file)).family.name == families.QWEN_IMAGE  # read from the config folder
        pipe = file_pipe(file)
        got = generate(pipe, "a tower", 4, **DEFAULTS, **SIZE)
        if name.endswith(".gguf"):
            assert transformer_files.quantization(pipe.transformer) == "gguf Q8_0"
            diff = np.abs(got - want)
            assert 0 < diff.mean() <= GGUF_TOLERANCE["mean"] and diff.max() <= GGUF_TOLERANCE["max"]
        else:
            assert np.array_equal(got, want)
    gguf_need = model_info(str(files["qwen-image-Q8_0.gguf"])).memory
    assert gguf_need.weights_gb < families.FAMILIES[families.QWEN_IMAGE].memory.weights_gb


def test_the_hires_fix_runs_qwen_image_img2img_for_its_second_pass(qwen, store, models_dir):
    folder = builtin_path(models_dir, "tiny-qwen-image")
    doc = run(qwen, {"model": MODEL, "prompts": ["a hill"],
                     "params": {"steps": 3, "seed": 3, **SIZE, "hires": {"scale": 2, "strength": 0.5, "steps": 4}}})
    img = result(store, doc["items"][0])
    assert img.size == (128, 128)
    want = hires_want(lambda *a, **kw: direct(folder, *a, **kw), DEFAULTS)
    assert np.abs(pixels(img) - want).max() <= 2
