"""Flux.1 LoRA adapters through the real queue on `builtin:tiny-flux` with `builtin:tiny-lora-flux` (diffusers'
Flux layout): the adapter changes the image, equal to diffusers' own `load_lora_weights` + `set_adapters` for
the same seed; the next job without it on the same warm worker makes the never-adapted image bit for bit; an
SD adapter on Flux and the Flux adapter on SD are refused at submit naming the field; sd-parsers reads the
infotext's LoRA tag. The quantization of a loaded GGUF model is in the worker's capability record."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from cli.client import Client
from sdq import loras
from sdq.infotext import parse_infotext
from sdq.sources import builtin_path
from tests.conftest import wait_until
from tests.test_flux import DEFAULTS, SIZE, direct, run
from tests.test_pipelines import close, pixels, result

ADAPTER = "builtin:tiny-lora-flux"
PROMPT = "a red lighthouse"
STEPS = 3


def community_lora(layout: str) -> dict:
    """A random rank-4 Flux LoRA for tiny-flux's shapes (32 wide) in a community layout diffusers converts:
    Kohya's (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, `alpha`) or XLabs'
    (`double_blocks.0.processor.qkv_lora1.down.weight`). Kohya's single-block `linear1` is left out: diffusers
    splits it at full-size Flux's widths (3072, 12288), which a tiny model does not have."""
    import torch

    gen = torch.Generator().manual_seed(5)
    out = {}

    def pair(down: str, up: str, inner: int, outer: int) -> None:
        out[down] = torch.randn(4, inner, generator=gen) / inner ** 0.5
        out[up] = torch.randn(outer, 4, generator=gen) * 0.5

    if layout == "kohya":
        for module, inner, outer in (("double_blocks_0_img_attn_qkv", 32, 96), ("double_blocks_0_img_attn_proj", 32, 32),
                                     ("double_blocks_0_txt_attn_qkv", 32, 96), ("single_blocks_1_linear2", 160, 32)):
            key = f"lora_unet_{module}"
            pair(f"{key}.lora_down.weight", f"{key}.lora_up.weight", inner, outer)
            out[f"{key}.alpha"] = torch.tensor(4.0)
    else:
        for module, outer in (("qkv_lora1", 96), ("proj_lora1", 32), ("qkv_lora2", 96), ("proj_lora2", 32)):
            key = f"double_blocks.0.processor.{module}"
            pair(f"{key}.down.weight", f"{key}.up.weight", 32, outer)
    return out


COMMUNITY = ("kohya", "xlabs")


@pytest.fixture(scope="module")
def community_files(tmp_path_factory) -> dict[str, Path]:
    """The community-layout adapters as allowlisted local files."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("flux-loras")
    for layout in COMMUNITY:
        save_file(community_lora(layout), str(d / f"flux-{layout}.safetensors"))
    return {layout: d / f"flux-{layout}.safetensors" for layout in COMMUNITY}


@pytest.fixture(scope="module")
def flux_stack(stack_factory, community_files):
    st = stack_factory("flux-lora", env={"SDQ_MODELS": ",".join(str(p) for p in community_files.values())})
    st.worker("w-flux-lora", "--device", "cpu", "--threads", "1")
    return st


@pytest.fixture(scope="module")
def flux(flux_stack) -> Client:
    return Client(flux_stack.env["SDQ_SERVER"])


def body(seed: int, adapters: list[dict] | None = None, model: str = "builtin:tiny-flux") -> dict:
    """A txt2img job never answered from the result cache."""
    params: dict = {"steps": STEPS, "seed": seed, "cache": False, **SIZE}
    if adapters is not None:
        params["loras"] = adapters
    return {"model": model, "prompts": [PROMPT], "params": params}


def make(client: Client, store, seed: int, adapters: list[dict] | None = None) -> tuple[np.ndarray, dict]:
    item = run(client, body(seed, adapters))["items"][0]
    return pixels(result(store, item)), item


@lru_cache(maxsize=None)
def _direct_pipe(models_dir: Path):
    import diffusers
    import torch

    pipe = diffusers.FluxPipeline.from_pretrained(builtin_path(models_dir, "tiny-flux"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(builtin_path(models_dir, "tiny-lora-flux")), weight_name=loras.ADAPTER_FILE,
                           adapter_name="direct")
    return pipe


def direct_with_lora(models_dir: Path, scale: float, seed: int) -> np.ndarray:
    """The image plain diffusers makes with its peft LoRA API (one thread, like the worker)."""
    import torch

    torch.set_num_threads(1)
    pipe = _direct_pipe(models_dir)
    pipe.set_adapters(["direct"], adapter_weights=[scale])
    out = pipe(PROMPT, num_inference_steps=STEPS, generator=torch.Generator("cpu").manual_seed(seed), **DEFAULTS,
               **SIZE)
    return pixels(out.images[0])


def test_the_flux_adapter_is_the_same_bytes_every_time_and_reads_as_flux(models_dir, tmp_path):
    from workers.builtins.registry import BUILDERS, ensure_builtin

    BUILDERS["tiny-lora-flux"](tmp_path / "a")
    built = ensure_builtin(models_dir, "tiny-lora-flux") / loras.ADAPTER_FILE
    assert (tmp_path / "a" / loras.ADAPTER_FILE).read_bytes() == built.read_bytes()
    header = loras.read_header(built)
    assert loras.file_family(built) == "flux" == loras.adapter_family(ADAPTER)
    # The tensor names alone say Flux too (diffusers' layout: the transformer's single-stream blocks).
    assert loras.family_from_keys([k for k in header if k != "__metadata__"]) == "flux"
    assert all(k.startswith("transformer.") for k in header if k != "__metadata__")


def test_a_flux_lora_changes_the_image_like_diffusers_and_the_next_job_without_it_does_not(flux, store, models_dir):
    plain, first = make(flux, store, 31)
    styled, second = make(flux, store, 31, [{"name": ADAPTER, "scale": 1}])
    again, third = make(flux, store, 31)
    assert first["worker"] == second["worker"] == third["worker"]  # one warm worker, the adapter still loaded
    want = direct_with_lora(models_dir, 1.0, 31)
    assert close(styled, want), np.abs(styled - want).max()
    assert np.abs(styled - plain).mean() > 3.0  # visibly changed (measured ~9.6 /255 on average)
    assert np.array_equal(again, plain)  # switched off: the base weights alone, bit for bit
    record = next(w for w in flux.workers() if w["name"] == third["worker"])
    assert ADAPTER in record["loaded_adapters"]["builtin:tiny-flux"]  # kept warm, and said so
    # ...and a never-adapted pipeline makes that same image (the adapter left nothing behind).
    assert close(plain, direct(models_dir, "txt2img", PROMPT, 31, steps=STEPS, **DEFAULTS, **SIZE))


def test_the_scale_reaches_the_flux_adapter(flux, store, models_dir):
    half, _ = make(flux, store, 33, [{"name": ADAPTER, "scale": 0.5}])
    full, _ = make(flux, store, 33, [{"name": ADAPTER, "scale": 1.0}])
    assert close(half, direct_with_lora(models_dir, 0.5, 33))
    assert np.abs(half - full).mean() > 1.0


@pytest.mark.parametrize("layout", COMMUNITY)
def test_community_flux_layouts_load_through_the_worker_like_diffusers_converts_them(flux, store, models_dir,
                                                                                   community_files, layout):
    import diffusers
    import torch

    file = community_files[layout]
    assert loras.file_family(file) == "flux"  # read from the names: no metadata in these files
    plain, _ = make(flux, store, 37)
    got, _ = make(flux, store, 37, [{"name": str(file), "scale": 1}])
    torch.set_num_threads(1)
    pipe = diffusers.FluxPipeline.from_pretrained(builtin_path(models_dir, "tiny-flux"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(file), adapter_name="direct")  # diffusers converts the layout
    want = pixels(pipe(PROMPT, num_inference_steps=STEPS, generator=torch.Generator("cpu").manual_seed(37),
                       **DEFAULTS, **SIZE).images[0])
    assert close(got, want), np.abs(got - want).max()
    assert np.abs(got - plain).mean() > 3.0


@pytest.mark.parametrize("model, adapter", [
    ("builtin:tiny-flux", "builtin:tiny-lora"),  # an SD adapter on Flux
    ("builtin:tiny-flux", "builtin:tiny-lora-sdxl"),
    ("builtin:tiny-sd", ADAPTER),  # the Flux adapter on SD
    ("builtin:tiny-sdxl", ADAPTER),
])
def test_an_adapter_for_another_family_is_refused_naming_the_field(flux, model, adapter):
    job = body(1, [{"name": adapter}], model)
    resp = flux.session.post(f"{flux.server}/v1/jobs", json=job, timeout=10)
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert (err["field"], err["code"]) == ("params.loras[0].name", "wrong_family"), err
    assert err["field"].startswith("params.loras") and "flux" in err["message"]


def test_sd_parsers_reads_the_flux_lora_tag_and_inspect_names_the_adapter(flux, store, tmp_path):
    from PIL.PngImagePlugin import PngInfo
    from sd_parsers import ParserManager

    adapters = [{"name": ADAPTER, "scale": 0.75}]
    img = result(store, run(flux, body(47, adapters))["items"][0])
    text = img.info["parameters"]
    assert text.splitlines()[0] == f"{PROMPT} <lora:tiny-lora-flux:0.75>"
    info = parse_infotext(text)
    assert info["Lora hashes"].startswith("tiny-lora-flux: ") and info["Model"] == "builtin:tiny-flux"
    path = tmp_path / "flux-lora.png"
    meta = PngInfo()
    meta.add_text("parameters", text)
    img.save(path, pnginfo=meta)
    parsed = ParserManager().parse(str(path))  # a third-party reader of A1111 infotext
    assert parsed is not None and "<lora:tiny-lora-flux:0.75>" in parsed.full_prompt
    out = subprocess.run([sys.executable, "-m", "cli", "inspect", "--json", str(path)], capture_output=True,
                         text=True, timeout=60, env={**os.environ})
    assert out.returncode == 0, out.stderr
    again = json.loads(out.stdout)["resubmit"]
    assert again["params"]["loras"] == adapters and again["model"] == "builtin:tiny-flux"


def test_a_worker_with_the_gguf_model_loaded_advertises_its_quantization(flux, flux_stack, store):
    run(flux, {"model": "builtin:tiny-flux-gguf", "prompts": ["a tower"], "params": {"steps": 2, **SIZE}})
    record = wait_until(lambda: next((w for w in flux.workers() if "builtin:tiny-flux-gguf" in w["loaded_models"]),
                                     None), "a record with the GGUF model loaded", 60)
    assert record["quantized"]["builtin:tiny-flux-gguf"] == "gguf Q8_0"
    assert "builtin:tiny-flux" not in record["quantized"]  # only quantized models are listed
    env = {**os.environ, **flux_stack.env}
    out = subprocess.run([sys.executable, "-m", "cli", "workers"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "builtin:tiny-flux-gguf (gguf Q8_0)" in out.stdout, out.stdout
