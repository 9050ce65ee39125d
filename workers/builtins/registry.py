"""Built-in tiny models: real diffusers pipelines with small random weights.

Each is generated deterministically (fixed seeds, fixed configs) on first use into
``<models_dir>/builtin/<name>`` and then loaded through the ordinary `from_pretrained` path.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from sdq.sources import builtin_path, is_model_folder
from workers.builtins import families as builtin_families
from workers.builtins import flux as builtin_flux
from workers.builtins import qwen as builtin_qwen
from workers.builtins import flux2 as builtin_flux2
from workers.builtins import flux2dev as builtin_flux2dev
from workers.builtins import video as builtin_video
from workers.builtins import zimage as builtin_zimage
from workers.running import preview

from workers.builtins.parts import (SD_SCHEDULER, tiny_safety_checker, tiny_text_encoder, tiny_tokenizer, tiny_unet,
                                  tiny_vae)


def build_tiny_sd(path: Path, safety_threshold: float | None = None) -> None:
    """Write `builtin:tiny-sd`, a StableDiffusionPipeline, to `path`; with `safety_threshold`, the
    same model with a safety checker (see `tiny_safety_checker`), as SD 1.x repositories ship one."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    tokenizer = tiny_tokenizer()
    vocab = tokenizer.get_vocab()
    checker, processor = tiny_safety_checker(safety_threshold) if safety_threshold is not None else (None, None)
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(), unet=tiny_unet(), tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"]),
        scheduler=PNDMScheduler(**SD_SCHEDULER), safety_checker=checker, feature_extractor=processor,
        requires_safety_checker=checker is not None,
    )
    pipe.save_pretrained(path, safe_serialization=True)


UPSCALER_LOW_RES_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear",
)
"""The x4 upscaler's noise schedule for the low-resolution image (as in the real model)."""


def _text_parts():
    tokenizer = tiny_tokenizer()
    vocab = tokenizer.get_vocab()
    encoder = tiny_text_encoder(len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"])
    return tokenizer, encoder


def build_tiny_upscaler(path: Path) -> None:
    """Write `builtin:tiny-upscaler`, a StableDiffusionUpscalePipeline, to `path`.

    Shaped like the x4 upscaler: the UNet sees 4 latent + 3 low-resolution image channels (7) and
    the noise level as a class label; the VAE has 3 blocks, so its decoder upsamples 4x and the
    output is 4x the input image.
    """
    from diffusers import DDPMScheduler, PNDMScheduler, StableDiffusionUpscalePipeline

    tokenizer, encoder = _text_parts()
    vae = tiny_vae(blocks=3)
    vae.register_to_config(scaling_factor=0.08333)
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=tiny_unet(in_channels=7, num_class_embeds=1000),
        low_res_scheduler=DDPMScheduler(**UPSCALER_LOW_RES_SCHEDULER), scheduler=PNDMScheduler(**SD_SCHEDULER),
        max_noise_level=350,
    )
    pipe.save_pretrained(path, safe_serialization=True)


DEPTH_INIT_RANGE = 0.2
"""Weight init std of the tiny DPT: its depth output is then O(100) (at 0.02 it is ~1e-9, at 0.3 ~1e5)."""


def tiny_depth_estimator():
    """A 4-layer ViT DPT depth estimator (hidden size 32) and its image processor (32x32 input)."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessorPil

    torch.manual_seed(4)
    config = DPTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=37, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 16, 32, 32],
        fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5], is_hybrid=False,
        # Wide enough weights that the depth comes out in the hundreds, as a real DPT's does: with the
        # default 0.02 the tiny model's depth is ~1e-9, which underflows to a flat map (and NaN after
        # diffusers' min-max normalisation) in fp16.
        initializer_range=DEPTH_INIT_RANGE,
    )
    # The PIL processor, pinned: the default class changes with whether torchvision is installed.
    processor = DPTImageProcessorPil(size={"height": 32, "width": 32}, keep_aspect_ratio=False)
    return DPTForDepthEstimation(config).eval(), processor


def build_tiny_depth(path: Path) -> None:
    """Write `builtin:tiny-depth`, a StableDiffusionDepth2ImgPipeline, to `path` (UNet: 4 latent
    channels + 1 depth channel)."""
    from diffusers import PNDMScheduler, StableDiffusionDepth2ImgPipeline

    tokenizer, encoder = _text_parts()
    estimator, processor = tiny_depth_estimator()
    pipe = StableDiffusionDepth2ImgPipeline(
        vae=tiny_vae(), text_encoder=encoder, tokenizer=tokenizer, unet=tiny_unet(in_channels=5),
        scheduler=PNDMScheduler(**SD_SCHEDULER), depth_estimator=estimator, feature_extractor=processor,
    )
    pipe.save_pretrained(path, safe_serialization=True)


def _lora_builders() -> dict[str, Callable[[Path], None]]:
    from workers.builtins.loras import (build_tiny_lora, build_tiny_lora_flux, build_tiny_lora_kohya,
                                        build_tiny_lora_sdxl)

    return {"tiny-lora": build_tiny_lora, "tiny-lora-kohya": build_tiny_lora_kohya,
            "tiny-lora-sdxl": build_tiny_lora_sdxl, "tiny-lora-flux": build_tiny_lora_flux}


CONTROLNET_INIT_STD = 0.3
"""Std of the random weights given to the tiny ControlNet's zero-initialised output convolutions (a
trained ControlNet's are not zero; at 0 the ControlNet would change nothing)."""


def _he_init(convs) -> None:
    """He-normal weights and zero biases: the conditioning embedding then follows its input (with
    PyTorch's default init its output is mostly its biases, and the control image barely counts)."""
    for conv in convs:
        fan_in = conv.weight[0].numel()
        conv.weight.normal_(0, (2 / fan_in) ** 0.5)
        conv.bias.zero_()


def tiny_controlnet(unet, seed: int):
    """A ControlNetModel for `unet`: its encoder copied (`ControlNetModel.from_unet`), a 3-stage (8x)
    conditioning embedding, and seeded random weights in the convolutions a fresh ControlNet starts at
    zero (see `_he_init`)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 32, 32)).eval()
    embedding = net.controlnet_cond_embedding
    with torch.no_grad():
        _he_init([embedding.conv_in, *embedding.blocks, embedding.conv_out])
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            conv.weight.normal_(0, CONTROLNET_INIT_STD)
            conv.bias.zero_()
    return net


def build_tiny_controlnet(path: Path) -> None:
    """Write `builtin:tiny-controlnet`, a ControlNet for `builtin:tiny-sd`'s UNet, to `path`."""
    tiny_controlnet(tiny_unet(), seed=6).save_pretrained(path, safe_serialization=True)


def build_tiny_sdxl_controlnet(path: Path) -> None:
    """Write `builtin:tiny-sdxl-controlnet`, a ControlNet for `builtin:tiny-sdxl`'s UNet (its size/crop
    conditioning included), to `path`."""
    tiny_controlnet(builtin_families.tiny_sdxl_unet(), seed=16).save_pretrained(path, safe_serialization=True)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-sd": build_tiny_sd, "tiny-upscaler": build_tiny_upscaler, "tiny-depth": build_tiny_depth,
    "tiny-controlnet": build_tiny_controlnet, "tiny-sdxl-controlnet": build_tiny_sdxl_controlnet,
    **builtin_families.BUILDERS,
    **builtin_flux.BUILDERS,
    **builtin_qwen.BUILDERS,
    **builtin_flux2.BUILDERS,
    **builtin_flux2dev.BUILDERS,
    **_lora_builders(),
    **preview.BUILDERS,
    **builtin_video.BUILDERS,
    **builtin_zimage.BUILDERS,
}
"""Built-in model name (after `builtin:`) to its generator."""


def _complete(folder: Path) -> bool:
    """A built-in's folder is there: a model's (`is_model_folder`) or an adapter's file."""
    from sdq.loras import ADAPTER_FILE

    return is_model_folder(folder) or (folder / ADAPTER_FILE).exists()


def builder_of(name: str) -> Callable[[Path], None]:
    """The generator of built-in `name`: a tiny one, or a full-size one (`workers.builtins.fullsize`)."""
    from workers.builtins.fullsize import FULLSIZE_BUILDERS

    builder = BUILDERS.get(name) or FULLSIZE_BUILDERS.get(name)
    if builder is None:
        raise KeyError(name)
    return builder


def ensure_builtin(models_dir: Path, name: str) -> Path:
    """Generate built-in `name` into the cache unless present; return its folder."""
    build = builder_of(name)
    target = builtin_path(models_dir, name)
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race: its copy is identical
            if not _complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
