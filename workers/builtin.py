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
from workers import builtin_families

SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    skip_prk_steps=True,
    steps_offset=1,
    set_alpha_to_one=False,
)
"""The SD-v1 PNDM scheduler config (pinned: diffusers' defaults differ)."""


def bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE table: printable bytes map to themselves, the rest to 256+n."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tiny_tokenizer():
    """A byte-level CLIP tokenizer: every byte a token (with and without `</w>`), no merges."""
    from transformers import CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for ch in chars:
        vocab[ch] = len(vocab)
    for ch in chars:
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_text_encoder(vocab_size: int, bos: int, eos: int):
    """A 2-layer CLIP text encoder with hidden size 32."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos,
        pad_token_id=eos, projection_dim=32,
    )
    return CLIPTextModel(config).eval()


def tiny_vae(blocks: int = 4):
    """An AutoencoderKL shaped like SD's: `blocks` blocks, 2**(blocks-1) downsampling."""
    from diffusers import AutoencoderKL

    torch.manual_seed(2)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32,) * blocks,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=1, norm_num_groups=32, sample_size=64,
    ).eval()


def tiny_unet(in_channels: int = 4, **extra):
    """A two-level conditional UNet with cross-attention dim 32."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(3)
    return UNet2DConditionModel(
        sample_size=32, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32, **extra,
    ).eval()


def tiny_safety_checker(threshold: float):
    """A real `StableDiffusionSafetyChecker` (tiny CLIP vision tower, hidden size 32) and its CLIP
    image processor, with every concept threshold set to `threshold`. A concept's score is its
    cosine similarity (-1..1) minus the threshold, so -2 flags every image and 2 none: a stand-in
    whose verdict a test knows in advance (the real checker's concept embeddings are not public)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessorPil

    torch.manual_seed(5)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, processor


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
    from workers.builtin_loras import build_tiny_lora, build_tiny_lora_kohya, build_tiny_lora_sdxl

    return {"tiny-lora": build_tiny_lora, "tiny-lora-kohya": build_tiny_lora_kohya,
            "tiny-lora-sdxl": build_tiny_lora_sdxl}


def _video_builders() -> dict[str, Callable[[Path], None]]:
    from workers.builtin_video import BUILDERS as VIDEO_BUILDERS

    return VIDEO_BUILDERS


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
    **_lora_builders(),
    **_video_builders(),
}
"""Built-in model name (after `builtin:`) to its generator."""


def _complete(folder: Path) -> bool:
    """A built-in's folder is there: a model's (`is_model_folder`) or an adapter's file."""
    from sdq.loras import ADAPTER_FILE

    return is_model_folder(folder) or (folder / ADAPTER_FILE).exists()


def builder_of(name: str) -> Callable[[Path], None]:
    """The generator of built-in `name`: a tiny one, or a full-size one (`workers.builtin_fullsize`)."""
    from workers.builtin_fullsize import FULLSIZE_BUILDERS

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
