"""The full-size built-ins: real architecture sizes (checked on the `meta` device, no weights), the
deterministic streamed weights, and `builtin:sd15-shaped` making one 64x64 image through the queue."""
from __future__ import annotations

import io
import json
import shutil
import struct
import time

import pytest
import torch
from PIL import Image

from cli.client import Client
from sdq.infotext import parse_infotext
from sdq.models import BUILTIN_MODELS
from sdq.sources import builtin_path
from workers.builtins import fullsize as fs
from workers.builtins.registry import ensure_builtin
from tests.conftest import wait_job, wait_until

SIZES = {  # component -> parameters of the public model (SD 1.5, SD 2.1-768)
    "sd15": {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
    "sd2": {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863},
}


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name,unet,text,side", [("sd15", fs.SD15_UNET, fs.CLIP_L_TEXT, 512),
                                                 ("sd2", fs.SD2_UNET, fs.OPENCLIP_H_TEXT, 768)])
def test_the_shapes_are_the_public_models(name, unet, text, side):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        vae = AutoencoderKL(**fs.vae_config(unet))
        got = {"unet": _params(UNet2DConditionModel(**unet)), "vae": _params(vae),
               "text_encoder": _params(CLIPTextModel(CLIPTextConfig(vocab_size=fs.CLIP_VOCAB, **text)))}
    assert got == SIZES[name]
    # VAE tiling (low-memory mode) decodes in tiles of the published config's image size, not 32 px
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size) == (side, side // 8)


def test_streamed_weights_are_deterministic_and_initialised_like_torch(tmp_path):
    """Two writes give the same bytes; norms are 1/0, linear weights within +-1/sqrt(fan_in)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    config = dict(fs.SD_VAE, block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1)
    with torch.device("meta"):
        model = AutoencoderKL(**config)
    n = fs.write_random_weights(model, "vae", tmp_path / "a.safetensors")
    fs.write_random_weights(model, "vae", tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    weights = load_file(tmp_path / "a.safetensors")
    assert n == _params(model) == sum(t.numel() for t in weights.values())
    norm = weights["encoder.conv_norm_out.weight"]
    assert torch.equal(norm, torch.ones_like(norm)) and not weights["encoder.conv_norm_out.bias"].any()
    conv = weights["encoder.conv_in.weight"]  # fan_in 3*3*3
    assert conv.abs().max() <= 27 ** -0.5 and conv.std() > 0.5 * 27 ** -0.5 / 3 ** 0.5


@pytest.fixture(scope="module")
def sd15(models_dir):
    """`builtin:sd15-shaped` in the session's model cache (removed afterwards unless the cache is kept)."""
    import os

    t0 = time.perf_counter()
    path = ensure_builtin(models_dir, "sd15-shaped")
    print(f"sd15-shaped generated in {time.perf_counter() - t0:.1f} s")
    yield path
    if not os.environ.get("SDQ_TEST_MODELS_DIR"):
        shutil.rmtree(path, ignore_errors=True)  # 4 GB: pytest keeps the last sessions' folders


@pytest.mark.slow
def test_sd15_shaped_makes_one_image_through_the_queue(stack_factory, store, models_dir, sd15):
    """The full-size built-in is served like the tiny ones: generated once, loaded, one 64x64 image.
    Its own stack and worker, so it runs beside the session's other stacks."""
    assert {"txt2img", "img2img"} <= set(BUILTIN_MODELS["builtin:sd15-shaped"])
    assert sd15 == builtin_path(models_dir, "sd15-shaped")
    raw = (sd15 / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()[:200_000]
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert sum(torch.Size(v["shape"]).numel() for k, v in header.items() if k != "__metadata__") == SIZES["sd15"]["unet"]
    st = stack_factory("fullsize")
    st.worker("w-full", "--device", "cpu", "--threads", "1", "--models", "builtin:sd15-shaped")
    client = Client(st.env["SDQ_SERVER"])
    job = client.submit({"model": "builtin:sd15-shaped", "prompts": ["a harbour at dusk"],
                         "params": {"width": 64, "height": 64, "steps": 1}})
    doc = wait_job(client, job["id"], timeout=400)
    item = doc["items"][0]
    assert (doc["state"], item["worker"], item["dtype"]) == ("succeeded", "w-full", "fp32"), doc
    image = Image.open(io.BytesIO(store.get(item["key"])))
    assert image.size == (64, 64)
    info = parse_infotext(image.info["parameters"])
    assert (info["Model"], info["Steps"]) == ("builtin:sd15-shaped", "1")
    # The worker advertises the memory it really used: at least the fp32 weights (1.07 G parameters, 4 GiB).
    weights_gb = sum(SIZES["sd15"].values()) * 4 / 2**30
    record = wait_until(lambda: next((w for w in client.workers() if w["name"] == "w-full"
                                      and (w.get("peak_rss_gb") or 0) >= weights_gb), None), "peak RSS published")
    assert record["peak_rss_gb"] < 3 * weights_gb, record["peak_rss_gb"]
