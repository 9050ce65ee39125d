"""Full-size built-ins: the real SD 1.5 and SD 2 (768, v-prediction) architectures with random weights.

`builtin:sd15-shaped` and `builtin:sd2-768-shaped` have the public configs' shapes (UNet 859.5 M / 865.9 M
parameters, CLIP ViT-L / OpenCLIP-H text encoder, the 4-block VAE), so memory, low-memory mode and speed are
measured at real size without downloading weights. Their images are noise-like: the weights are random.

Each component is built on the `meta` device (shapes only) and its weights are written straight into a
safetensors file one tensor at a time, from a generator seeded by the tensor's name: the same bytes on
every machine, and the peak memory is one tensor, not the model (a full `save_pretrained` holds the model
and a serialised copy). The tokenizer is the tiny byte-level one (the real BPE vocabulary is not public
data we ship); the text encoder keeps the real 49,408-token embedding.
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from workers.builtins.parts import SD_SCHEDULER, tiny_tokenizer

WEIGHT_SEED = 1234
"""Base seed of every full-size built-in's weights (each tensor's seed adds a hash of its name)."""

EMBEDDING_STD = 0.02
"""Std of token and position embeddings (CLIP's initializer range)."""

CLIP_VOCAB = 49408
"""The real CLIP vocabulary size: the embedding matrix keeps its shape (the tiny tokenizer uses its first ids)."""

SD15_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu", flip_sin_to_cos=True,
    freq_shift=0, downsample_padding=1, mid_block_scale_factor=1, norm_eps=1e-5,
)
"""SD 1.5's UNet config (859.5 M parameters)."""

SD2_UNET: dict[str, Any] = dict(
    SD15_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True, upcast_attention=True,
)
"""SD 2.1-768's UNet config (865.9 M parameters, linear projections, upcast attention)."""

CLIP_L_TEXT: dict[str, Any] = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
"""CLIP ViT-L/14's text tower (SD 1.x, 123 M parameters)."""

OPENCLIP_H_TEXT: dict[str, Any] = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
)
"""OpenCLIP ViT-H/14's text tower as SD 2 ships it (23 of 24 layers: SD 2 uses the penultimate one)."""

SD_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2, norm_num_groups=32, act_fn="silu", scaling_factor=0.18215,
)
"""The SD 1.x/2.x VAE (83.7 M parameters, 8x downsampling); its `sample_size` is the model's image size (`vae_config`)."""


def vae_config(unet: dict[str, Any]) -> dict[str, Any]:
    """The VAE config for a UNet config: `sample_size` is the image side the published VAE config gives
    (512 for SD 1.5, 768 for SD 2.1-768); VAE tiling decodes in tiles of that side (without it, diffusers'
    default of 32 px made low-memory mode decode in 32-px tiles, 3x slower at 512x512)."""
    return {**SD_VAE, "sample_size": unet["sample_size"] * 8}

SD2_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
)
"""SD 2.1-768's DDIM scheduler config (v-prediction)."""


def _seed(component: str, name: str) -> int:
    return WEIGHT_SEED + zlib.crc32(f"{component}/{name}".encode())


def _fan_in(shape: torch.Size) -> int:
    n = 1
    for d in shape[1:]:
        n *= d
    return max(1, n)


def init_tensor(module: nn.Module, kind: str, shape: torch.Size, weight_shape: torch.Size | None,
                generator: torch.Generator) -> torch.Tensor:
    """One parameter's random value, as PyTorch's default initialisers make it: norms 1 (weight) and 0
    (bias), embeddings N(0, 0.02), linear and conv weights and biases U(+-1/sqrt(fan_in))."""
    if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
        return torch.ones(shape) if kind == "weight" else torch.zeros(shape)
    if isinstance(module, nn.Embedding):
        return torch.empty(shape).normal_(0.0, EMBEDDING_STD, generator=generator)
    bound = _fan_in(weight_shape if weight_shape is not None else shape) ** -0.5
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def write_random_weights(model: nn.Module, component: str, file: Path) -> int:
    """Write `model`'s (a meta-device module) state dict with random values to a safetensors file,
    tensor by tensor; returns the number of parameters."""
    # 1. The header: every tensor's dtype, shape and byte range (fp32).
    shapes = {name: t.shape for name, t in model.state_dict().items()}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    # 2. The data, one tensor at a time.
    with open(file, "wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes.items():
            owner, _, kind = name.rpartition(".")
            module = model.get_submodule(owner)
            weight = getattr(module, "weight", None)
            g = torch.Generator().manual_seed(_seed(component, name))
            value = init_tensor(module, kind, shape, weight.shape if weight is not None else None, g)
            out.write(memoryview(value.contiguous().numpy()).cast("B"))  # no bytes copy
    return sum(math.prod(s) for s in shapes.values())


def _write_diffusers(cls, config: dict[str, Any], folder: Path, component: str) -> int:
    folder.mkdir(parents=True)
    with torch.device("meta"):
        model = cls(**config)
    model.save_config(folder)
    return write_random_weights(model, component, folder / "diffusion_pytorch_model.safetensors")


def _write_text_encoder(config: dict[str, Any], folder: Path, bos: int, eos: int) -> int:
    from transformers import CLIPTextConfig, CLIPTextModel

    folder.mkdir(parents=True)
    cfg = CLIPTextConfig(vocab_size=CLIP_VOCAB, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, **config)
    with torch.device("meta"):
        model = CLIPTextModel(cfg)
    cfg.save_pretrained(folder)
    return write_random_weights(model, "text_encoder", folder / "model.safetensors")


def build_shaped(path: Path, unet: dict[str, Any], text: dict[str, Any], scheduler_cls: str,
                 scheduler: dict[str, Any]) -> None:
    """Write a StableDiffusionPipeline folder with these component shapes and random weights."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    vocab = tokenizer.get_vocab()
    tokenizer.save_pretrained(path / "tokenizer")
    getattr(diffusers, scheduler_cls)(**scheduler).save_pretrained(path / "scheduler")
    _write_text_encoder(text, path / "text_encoder", vocab["<|startoftext|>"], vocab["<|endoftext|>"])
    _write_diffusers(UNet2DConditionModel, unet, path / "unet", "unet")
    _write_diffusers(AutoencoderKL, vae_config(unet), path / "vae", "vae")
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", scheduler_cls],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def build_sd15_shaped(path: Path) -> None:
    """Write `builtin:sd15-shaped` (SD 1.5's shapes, PNDM as SD 1.5 ships it) to `path`."""
    build_shaped(path, SD15_UNET, CLIP_L_TEXT, "PNDMScheduler", SD_SCHEDULER)


def build_sd2_768_shaped(path: Path) -> None:
    """Write `builtin:sd2-768-shaped` (SD 2.1-768's shapes, DDIM with v-prediction) to `path`."""
    build_shaped(path, SD2_UNET, OPENCLIP_H_TEXT, "DDIMScheduler", SD2_SCHEDULER)


FULLSIZE_BUILDERS: dict[str, Callable[[Path], None]] = {
    "sd15-shaped": build_sd15_shaped, "sd2-768-shaped": build_sd2_768_shaped,
}
"""Full-size built-in name (after `builtin:`) to its generator (not made by the test session's fixture)."""
