"""Built-in tiny models of the newer families: `builtin:tiny-sdxl` and `builtin:tiny-sd3`.

Like `builtin:tiny-sd` (see `workers.builtins.registry`): real diffusers pipelines with small random
weights, generated locally from fixed seeds and fixed configs (never downloaded), shaped like the
real models so that every code path the real ones take is taken: SDXL's two text encoders (the
second with a projection) and its size/crop conditioning ("text_time" added embeddings); SD3's
MMDiT transformer, two projecting CLIP encoders, a 16-channel VAE with shift and scale, and a
flow-matching scheduler. SD3's third (T5) encoder is left out, as diffusers allows
(`text_encoder_3=None`: its embeddings are zeros of `max_sequence_length` tokens).
"""
from __future__ import annotations

from pathlib import Path

import torch

SDXL_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", interpolation_type="linear", timestep_spacing="leading", steps_offset=1,
    use_karras_sigmas=False,
)
"""SDXL base's EulerDiscreteScheduler config (as the published model ships it)."""

SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)
"""SD3 medium's FlowMatchEulerDiscreteScheduler config."""

CLIP_L_HIDDEN = 32
"""Hidden size of the tiny stand-in for CLIP ViT-L (768 in the real models)."""
CLIP_G_HIDDEN = 64
"""Hidden and projection size of the tiny stand-in for OpenCLIP bigG (1280 in the real models). The
two must differ, as the real ones do: diffusers tells the encoders of a single-file checkpoint apart
by their width."""

T5_HIDDEN = 128
"""Width of SD3's joint text sequence (the T5 encoder's; 4096 in the real model)."""

TIME_EMBED_DIM = 8
"""SDXL's `addition_time_embed_dim` (real: 256): each of the 6 size/crop numbers becomes this many."""


def _clip_encoder(seed: int, projection: bool, hidden: int):
    """A 2-layer CLIP text encoder of width `hidden`, with a text projection (`hidden` wide) when `projection`."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from workers.builtins.parts import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    vocab = tokenizer.get_vocab()
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"], projection_dim=hidden,
    )
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return tokenizer, model.eval()


def _vae(latent_channels: int, seed: int, **config):
    """A 4-block AutoencoderKL (8x downsampling, like the real ones) with `latent_channels` channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(32,) * 4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=32, sample_size=256, **config,
    ).eval()


def tiny_sdxl_unet():
    """A two-level UNet with SDXL's conditioning: cross-attention over both encoders' hidden states
    (32 + 64 wide), and the second's pooled text embedding plus the 6 size/crop numbers as added
    embeddings."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(13)
    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=CLIP_L_HIDDEN + CLIP_G_HIDDEN,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=CLIP_G_HIDDEN + 6 * TIME_EMBED_DIM,
        transformer_layers_per_block=(1, 2), norm_num_groups=32,
    ).eval()


def build_tiny_sdxl(path: Path) -> None:
    """Write `builtin:tiny-sdxl`, a StableDiffusionXLPipeline, to `path` (default size 1024x1024:
    the UNet's sample size times the VAE's 8, as SDXL's)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer, encoder = _clip_encoder(11, projection=False, hidden=CLIP_L_HIDDEN)
    tokenizer_2, encoder_2 = _clip_encoder(12, projection=True, hidden=CLIP_G_HIDDEN)
    pipe = StableDiffusionXLPipeline(
        vae=_vae(4, 14, scaling_factor=0.13025, force_upcast=True), text_encoder=encoder, text_encoder_2=encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=tiny_sdxl_unet(),
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER), force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)


def tiny_sd3_transformer():
    """A 2-layer MMDiT (SD3Transformer2DModel): patch 2 over 16 latent channels, joint attention
    over the two CLIP encoders' concatenated hidden states (32 + 64, zero-padded to the 128 of the
    absent T5 encoder, as SD3 pads 768 + 1280 to 4096), pooled projections of both."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(23)
    return SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=T5_HIDDEN, caption_projection_dim=32,
        pooled_projection_dim=CLIP_L_HIDDEN + CLIP_G_HIDDEN, pos_embed_max_size=128,
    ).eval()


def build_tiny_sd3(path: Path) -> None:
    """Write `builtin:tiny-sd3`, a StableDiffusion3Pipeline without the T5 encoder, to `path`
    (default size 1024x1024, as SD3's)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    tokenizer, encoder = _clip_encoder(21, projection=True, hidden=CLIP_L_HIDDEN)
    tokenizer_2, encoder_2 = _clip_encoder(22, projection=True, hidden=CLIP_G_HIDDEN)
    vae = _vae(16, 24, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    pipe = StableDiffusion3Pipeline(
        transformer=tiny_sd3_transformer(), scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER), vae=vae,
        text_encoder=encoder, tokenizer=tokenizer, text_encoder_2=encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=None, tokenizer_3=None,
    )
    pipe.save_pretrained(path, safe_serialization=True)


BUILDERS = {"tiny-sdxl": build_tiny_sdxl, "tiny-sd3": build_tiny_sd3}
"""Built-in model name (after `builtin:`) to its generator (joined into `workers.builtins.registry.BUILDERS`)."""
