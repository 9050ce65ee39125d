"""Helpers shared by the diffusion families' queue tests (Flux.1, Flux.2, Z-Image, Qwen-Image)."""
from __future__ import annotations

import hashlib
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

from cli.client import Client
from cli.services import Stack
from sdq.infotext import parse_infotext
from tests.conftest import wait_job
from tests.test_pipelines import close, pixels, png, result, sketch

SIZE = {"width": 64, "height": 64}
"""The size every family test makes its images at."""

MASK = Image.new("L", (64, 64), 0)
ImageDraw.Draw(MASK).rectangle((0, 0, 31, 63), fill=255)

GGUF = "fp32 (gguf Q8_0)"
"""The dtype a Q8_0 GGUF transformer's item records."""


def digests(folder: Path) -> dict[str, str]:
    """The sha256 of every file below `folder`, by its relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run(client: Client, body: dict, timeout: float = 240) -> dict:
    """Submit `body` and wait until the job succeeded."""
    doc = wait_job(client, client.submit(body)["id"], timeout=timeout)
    assert doc["state"] == "succeeded", [it.get("error") for it in doc["items"]]
    return doc


def one_worker(stack_factory: Callable[..., Stack], name: str, worker: str, *args: str,
               env: dict[str, str] | None = None) -> Stack:
    """A private stack with one CPU worker on one thread (`args` added to its command line)."""
    st = stack_factory(name, env=env)
    st.worker(worker, "--device", "cpu", "--threads", "1", *args)
    return st


def generate(pipe: Any, prompt: str, seed: int, steps: int = 3, **kw: Any) -> np.ndarray:
    """The image a diffusers pipeline makes on one thread (like the worker) with a seeded CPU generator."""
    import torch

    torch.set_num_threads(1)
    out = pipe(prompt=prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed), **kw)
    return pixels(out.images[0])


def gguf_transformer(cls_name: str, folder: Path) -> Any:
    """The built-in's transformer from its GGUF file, as diffusers' docs load one."""
    import diffusers
    import torch

    return getattr(diffusers, cls_name).from_single_file(
        str(folder / "transformer" / "diffusion_pytorch_model.gguf"), config=str(folder), subfolder="transformer",
        quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=torch.float32), dtype=torch.float32)


def job_inputs(client: Client, task: str, defaults: dict) -> tuple[dict, dict]:
    """The job's params and the direct call's kwargs for `task` (seed 31, 3 steps): an uploaded init image for
    every pipeline but txt2img, strength 0.7 for img2img and inpaint, an uploaded mask for inpaint."""
    params: dict = {"steps": 3, "seed": 31, **SIZE}
    kw: dict = {**defaults, **SIZE}
    init = sketch((64, 64), seed=3)
    if task != "txt2img":
        params["init_image"] = client.upload(png(init), "init.png")["key"]
        kw["image"] = init
    if task in ("img2img", "inpaint"):
        params["strength"] = kw["strength"] = 0.7
    if task == "inpaint":
        params["mask_image"] = client.upload(png(MASK), "mask.png")["key"]
        kw["mask_image"] = MASK
    return params, kw


def assert_equals_direct(store: Any, doc: dict, direct: Callable[[int], np.ndarray]) -> Image.Image:
    """The job's first image is 64x64 and equals `direct(31)`, and differs from `direct(32)` (so the comparison
    can fail); returns the image."""
    img = result(store, doc["items"][0])
    assert img.size == (64, 64)
    assert close(pixels(img), direct(31))
    assert np.abs(pixels(img) - direct(32)).mean() > 0.5  # the comparison can fail: another seed differs
    return img


def assert_recorded(doc: dict, img: Image.Image, model: str, task: str, guidance: float) -> None:
    """The item's flow scheduler, guidance and sequence length, and the infotext's model and pipeline."""
    item = doc["items"][0]["params"]
    assert (item["scheduler"], item["guidance_scale"], item["max_sequence_length"]) == ("flow_euler", guidance, 256)
    info = parse_infotext(img.info["parameters"])
    assert info["Model"] == model and info["Pipeline"] == task


def assert_refused(client: Client, body: dict, field: str, timeout: float | None = None) -> dict:
    """Submitting `body` is refused with 422 naming `field`; returns the error."""
    resp = client.session.post(f"{client.server}/v1/jobs", json=body, timeout=timeout)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field, resp.text
    return resp.json()["error"]


def read_by_sd_parsers(text: str, path: Path, image: Image.Image) -> Any:
    """What sd-parsers (a third-party reader of A1111 infotext) reads from `image` saved with `text` at `path`."""
    from PIL.PngImagePlugin import PngInfo
    from sd_parsers import ParserManager

    meta = PngInfo()
    meta.add_text("parameters", text)
    image.save(path, pnginfo=meta)
    return ParserManager().parse(str(path))


def remade(client: Client, store: Any, again: dict) -> np.ndarray:
    """The pixels of the job a body read back from infotext makes (the result cache off)."""
    again["params"]["cache"] = False
    return pixels(result(store, run(client, again)["items"][0]))


def gguf_pair(client: Client, store: Any, body: dict, plain_model: str, quant_model: str,
              tolerance: dict) -> tuple[dict, dict, np.ndarray]:
    """Run `body` on the unquantized and the GGUF model: the images are within `tolerance` but not equal, the
    items and the infotext record the GGUF dtype; returns both items and the GGUF image's pixels."""
    plain = run(client, {**body, "model": plain_model})["items"][0]
    quant = run(client, {**body, "model": quant_model})["items"][0]
    a, b = pixels(result(store, plain)), pixels(result(store, quant))
    diff = np.abs(a - b)
    assert diff.max() <= tolerance["max"] and diff.mean() <= tolerance["mean"]
    assert diff.mean() > 0  # the quantized weights were used, not the model's float ones
    assert plain["dtype"] == "fp32" and quant["dtype"] == GGUF
    assert parse_infotext(result(store, quant).info["parameters"])["Dtype"] == GGUF
    return plain, quant, b


def plain_styled_again(client: Client, body: dict, loras: list[dict]) -> tuple[dict, dict, dict]:
    """The items of `body` run without, with and again without `loras` (the result cache off)."""
    base = {**body, "params": {**body["params"], "cache": False}}
    styled = {**base, "params": {**base["params"], "loras": loras}}
    plain, with_lora, again = (run(client, b)["items"][0] for b in (base, styled, base))
    return plain, with_lora, again


@lru_cache(maxsize=None)
def lora_pipe(cls_name: str, model: Path, adapter: Path) -> Any:
    """`model` with the adapter folder's LoRA loaded by diffusers' own loader as adapter "direct"."""
    import diffusers
    import torch

    from sdq.loras import ADAPTER_FILE

    pipe = getattr(diffusers, cls_name).from_pretrained(model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(adapter), weight_name=ADAPTER_FILE, adapter_name="direct")
    return pipe


def with_lora(pipe: Any, scale: float, prompt: str, seed: int, **kw: Any) -> np.ndarray:
    """The image `lora_pipe`'s pipeline makes with its adapter at `scale` (3 steps)."""
    pipe.set_adapters(["direct"], adapter_weights=[scale])
    return generate(pipe, prompt, seed, **kw)


def config_beside(src: Path, dest: Path, weights: str) -> Path:
    """A copy of the model folder `src` at `dest` without its transformer's `weights` file."""
    config = Path(shutil.copytree(src, dest))
    (config / "transformer" / weights).unlink()
    return config


def file_pipe(file: Path) -> Any:
    """The worker's loader's pipeline for a transformer file with its config folder beside it (fp32)."""
    import torch

    from workers.loading import transformer_files

    pipe = transformer_files.load(*transformer_files.transformer_file(file), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hires_want(direct: Callable[..., np.ndarray], defaults: dict) -> np.ndarray:
    """What the hires fix of "a hill" (seed 3, 3 steps at 64x64, then x2 at strength 0.5, 4 steps) should make:
    the direct txt2img image, resized, through the direct img2img."""
    low = Image.fromarray(direct("txt2img", "a hill", 3, **defaults, **SIZE).astype("uint8"))
    return direct("img2img", "a hill", 3, steps=4, image=low.resize((128, 128), Image.Resampling.LANCZOS),
                  strength=0.5, width=128, height=128, **defaults)


def negative_round_trip(client: Client, store: Any, body: dict, path: Path, with_negative: np.ndarray,
                        without: np.ndarray) -> tuple[dict, dict]:
    """`body` (one prompt with a negative prompt) makes `with_negative`, not `without`; sd-parsers reads both
    prompts from its infotext, which submitted again makes the same image; returns the parsed infotext and the
    body read back from it."""
    from sdq.infotext import submit_body_from_infotext

    img = result(store, run(client, body)["items"][0])
    assert close(pixels(img), with_negative)
    assert np.abs(pixels(img) - without).mean() > 0.5  # the negative prompt changed it
    text = img.info["parameters"]
    info = parse_infotext(text)
    parsed = read_by_sd_parsers(text, path, img)
    prompt, negative = body["prompts"][0], body["params"]["negative_prompt"]
    assert parsed is not None and prompt in parsed.full_prompt and negative in parsed.full_negative_prompt
    again = submit_body_from_infotext(info)
    assert again["model"] == body["model"]
    assert np.array_equal(remade(client, store, again), pixels(img))
    return info, again
