"""Built-in tiny Flux.1: `builtin:tiny-flux`, a real FluxPipeline with small random weights.

Like the other tiny built-ins (`workers.builtins.registry`, `workers.builtins.families`): generated locally from
fixed seeds and fixed configs, never downloaded, shaped like Flux.1 dev so that its code paths are
taken: a 16-channel VAE with shift and scale and no quant convolutions, latents packed 2x2 into the
transformer's 64 input channels, double- and single-stream blocks with 3-axis rotary embeddings, the
distilled guidance embedding (`guidance_embeds`, as dev has; schnell has none), a CLIP encoder for the
pooled embedding and a T5 encoder for the token sequence (both with locally built tokenizers), and
dev's dynamically shifted flow-matching scheduler. The same components run `FluxKontextPipeline`.

Import direction: `workers.builtins.registry` imports this module; this one imports `workers.builtins.families`
(and `workers.builtins.registry`'s tokenizer only inside a function, as `builtin_families` does).
"""
from __future__ import annotations

from pathlib import Path

import torch

from workers.builtins.families import CLIP_L_HIDDEN, _clip_encoder, _vae

FLUX_DEV_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096,
)
"""FLUX.1-dev's FlowMatchEulerDiscreteScheduler config, as published."""

FLUX_SCHNELL_SCHEDULER = dict(shift=1.0, use_dynamic_shifting=False)
"""Where FLUX.1-schnell's scheduler config differs from dev's."""

FLUX_VAE = dict(scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
"""The Flux VAE's latent scale and shift (its published config), on the tiny 16-channel VAE."""

T5_WIDTH = 32
"""`d_model` of the tiny T5 encoder (4096 in T5-XXL): the transformer's `joint_attention_dim`."""

T5_MAX_LENGTH = 512
"""The T5 tokenizer's `model_max_length` (Flux's `max_sequence_length` is at most 512)."""

def t5_tokenizer():
    """A T5 (Unigram) tokenizer over single characters: `<pad>`, `</s>`, `<unk>`, then printable ASCII,
    each alone and with SentencePiece's word-start mark `▁`, built locally (never downloaded)."""
    from transformers import T5TokenizerFast

    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("▁" + c, -2.5) for c in chars]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def t5_encoder(vocab_size: int, seed: int = 31):
    """A 2-layer T5 encoder of width `T5_WIDTH` (random weights from `seed`)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, d_model=T5_WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                      use_cache=False)
    return T5EncoderModel(config).eval()


def tiny_flux_transformer(seed: int = 33, guidance_embeds: bool = True):
    """A FluxTransformer2DModel with 1 double- and 2 single-stream blocks, 2 heads of 16 (rotary axes
    4+6+6), 64 input channels (16 latent channels packed 2x2), joint attention over the T5 sequence and
    the CLIP pooled embedding; `guidance_embeds`: dev's distilled guidance input (schnell: False)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=T5_WIDTH, pooled_projection_dim=CLIP_L_HIDDEN,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    ).eval()


def flux_components(schnell: bool = False) -> dict:
    """The components of `builtin:tiny-flux` (dev-like), or with `schnell` of `builtin:tiny-flux-schnell`
    (no guidance embedding, schnell's unshifted scheduler), by FluxPipeline's argument names."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tokenizer, encoder = _clip_encoder(31, projection=False, hidden=CLIP_L_HIDDEN)
    tokenizer_2 = t5_tokenizer()
    scheduler = {**FLUX_DEV_SCHEDULER, **(FLUX_SCHNELL_SCHEDULER if schnell else {})}
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler), vae=_vae(16, 34, **FLUX_VAE),
        text_encoder=encoder, tokenizer=tokenizer, text_encoder_2=t5_encoder(len(tokenizer_2)),
        tokenizer_2=tokenizer_2, transformer=tiny_flux_transformer(guidance_embeds=not schnell),
    )


def build_tiny_flux(path: Path) -> None:
    """Write `builtin:tiny-flux`, a FluxPipeline shaped like FLUX.1 dev, to `path`."""
    from diffusers import FluxPipeline

    FluxPipeline(**flux_components()).save_pretrained(path, safe_serialization=True)


def build_tiny_flux_schnell(path: Path) -> None:
    """Write `builtin:tiny-flux-schnell`, a FluxPipeline shaped like FLUX.1 schnell, to `path`."""
    from diffusers import FluxPipeline

    FluxPipeline(**flux_components(schnell=True)).save_pretrained(path, safe_serialization=True)


def build_tiny_flux_gguf(path: Path) -> None:
    """Write `builtin:tiny-flux-gguf` to `path`: `builtin:tiny-flux` with its transformer stored as a GGUF
    file (`transformer/diffusion_pytorch_model.gguf`, Q8_0 where the block size fits, see
    `workers.loading.transformer_files.write_gguf`) instead of safetensors, as quantized Flux files are published."""
    from safetensors.torch import load_file

    from workers.loading.transformer_files import write_gguf

    build_tiny_flux(path)
    weights = path / "transformer" / "diffusion_pytorch_model.safetensors"
    write_gguf(load_file(str(weights)), weights.with_suffix(".gguf"))
    weights.unlink()


FLUX_CONTROLNET_INIT_STD = 0.3
"""Std of the random weights of the tiny Flux ControlNet's zero-initialised layers (at 0 it would change nothing;
at 0.3 two control images give images ~10/255 apart in mean at 64x64 and 3-4 steps)."""


def tiny_flux_controlnet(seed: int = 36):
    """A FluxControlNetModel shaped to `builtin:tiny-flux`'s transformer (diffusers' `from_transformer`: its
    embedders and first blocks copied), 1 double- and 1 single-stream block, the control image VAE-encoded and
    packed like the latents (no conditioning embedding, not a union model: FLUX.1 dev ControlNets' layout), and
    seeded random weights in the layers a fresh ControlNet starts at zero (the control image's embedder and the
    per-block output projections), so that the control image changes the picture."""
    from diffusers import FluxControlNetModel

    net = FluxControlNetModel.from_transformer(tiny_flux_transformer(), num_layers=1, num_single_layers=1,
                                               attention_head_dim=16, num_attention_heads=2).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in [net.controlnet_x_embedder, *net.controlnet_blocks, *net.controlnet_single_blocks]:
            layer.weight.normal_(0, FLUX_CONTROLNET_INIT_STD)
            layer.bias.zero_()
    return net


def build_tiny_controlnet_flux(path: Path) -> None:
    """Write `builtin:tiny-controlnet-flux`, a ControlNet for `builtin:tiny-flux`, to `path`."""
    tiny_flux_controlnet().save_pretrained(path, safe_serialization=True)


BUILDERS = {"tiny-flux": build_tiny_flux, "tiny-flux-schnell": build_tiny_flux_schnell,
            "tiny-flux-gguf": build_tiny_flux_gguf, "tiny-controlnet-flux": build_tiny_controlnet_flux}
"""Built-in model name (after `builtin:`) to its generator (joined into `workers.builtins.registry.BUILDERS`)."""
