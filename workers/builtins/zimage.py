"""Built-in tiny Z-Image: `builtin:tiny-z-image` and `builtin:tiny-z-image-turbo`, real ZImagePipelines with
small random weights.

Like the other tiny built-ins (`workers.builtins.registry`): generated locally from fixed seeds and fixed
configs, never downloaded, shaped like Z-Image so that its code paths are taken: Flux's 16-channel VAE (shift
and scale, no quant convolutions), a single-stream transformer with refiner blocks for the noise and the
caption, 2x2 patches and 3-axis rotary embeddings, a Qwen3 text encoder (its next-to-last hidden states are
the caption features) with the byte-level Qwen tokenizer and a chat template (the pipeline wraps each prompt
in one), and Z-Image-Turbo's static-shift flow-matching scheduler. The Turbo-type built-in is the same
architecture with other weights: Z-Image and Z-Image-Turbo differ in their training, not their shapes.
`builtin:tiny-z-image-gguf` stores the transformer as a GGUF (Q8_0) file in the original layout;
`builtin:tiny-lora-z-image` is a LoRA adapter for `builtin:tiny-z-image` in diffusers' layout.

Import direction: `workers.builtins.registry` imports this module; this one imports `workers.builtins.families`,
`workers.builtins.flux` and `workers.builtins.textparts` (and, inside functions, `workers.builtins.loras` and
`workers.loading.transformer_files`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from workers.builtins.families import _vae
from workers.builtins.flux import FLUX_VAE
from workers.builtins.textparts import qwen_tokenizer

Z_IMAGE_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
"""Z-Image-Turbo's FlowMatchEulerDiscreteScheduler config, as published."""

QWEN3_WIDTH = 32
"""`hidden_size` of the tiny Qwen3 encoder (2560 in Qwen3-4B): the transformer's `cap_feat_dim`."""

QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}"
    "{%- endif %}"
)
"""A chat template in Qwen3's form (user turn, then the assistant's turn opened): what ZImagePipeline
renders each prompt with before tokenizing it."""


def qwen3_tokenizer():
    """The byte-level Qwen tokenizer (`textparts.qwen_tokenizer`) with Qwen3's chat template."""
    tokenizer = qwen_tokenizer()
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def qwen3_encoder(vocab_size: int, seed: int = 41):
    """A 2-layer Qwen3 model of width `QWEN3_WIDTH` (random weights from `seed`)."""
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=vocab_size, hidden_size=QWEN3_WIDTH, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                         use_cache=False)
    return Qwen3Model(config).eval()


def tiny_z_image_transformer(seed: int = 43):
    """A ZImageTransformer2DModel of width 64: 2 main and 1+1 refiner blocks, 2 heads of 32 (rotary axes
    8+12+12), 2x2 patches of 16 latent channels, caption features of the Qwen3 encoder's width. Its pad
    tokens, zeros when built, get seeded random values (a trained model's are not zero)."""
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    net = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, qk_norm=True, cap_feat_dim=QWEN3_WIDTH, axes_dims=[8, 12, 12],
        axes_lens=[1536, 512, 512],
    ).eval()
    with torch.no_grad():
        for token in (net.x_pad_token, net.cap_pad_token):
            token.copy_(torch.randn_like(token))
    return net


def z_image_components(turbo: bool = False) -> dict:
    """The components of `builtin:tiny-z-image`, or with `turbo` of `builtin:tiny-z-image-turbo` (other
    transformer and encoder weights, the same shapes), by ZImagePipeline's argument names."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tokenizer = qwen3_tokenizer()
    offset = 10 if turbo else 0
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(**Z_IMAGE_SCHEDULER), vae=_vae(16, 44, **FLUX_VAE),
        text_encoder=qwen3_encoder(len(tokenizer), seed=41 + offset), tokenizer=tokenizer,
        transformer=tiny_z_image_transformer(seed=43 + offset),
    )


def build_tiny_z_image(path: Path) -> None:
    """Write `builtin:tiny-z-image`, a ZImagePipeline shaped like Z-Image, to `path`."""
    from diffusers import ZImagePipeline

    ZImagePipeline(**z_image_components()).save_pretrained(path, safe_serialization=True)


def build_tiny_z_image_turbo(path: Path) -> None:
    """Write `builtin:tiny-z-image-turbo`, a ZImagePipeline standing for Z-Image-Turbo, to `path`."""
    from diffusers import ZImagePipeline

    ZImagePipeline(**z_image_components(turbo=True)).save_pretrained(path, safe_serialization=True)


ORIGINAL_NAMES = (("all_x_embedder.2-1.", "x_embedder."), ("all_final_layer.2-1.", "final_layer."),
                  (".attention.to_out.0.", ".attention.out."), (".attention.norm_q.", ".attention.q_norm."),
                  (".attention.norm_k.", ".attention.k_norm."))
"""diffusers' Z-Image transformer names -> the original (published single-file and GGUF) ones; the original
layout also fuses `to_q`, `to_k` and `to_v` into one `qkv` weight."""


def original_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers Z-Image transformer state dict in the original layout (what diffusers' single-file loader
    converts back)."""
    out = {}
    for key, value in state_dict.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            parts = [state_dict[key.replace(".to_q.", f".{p}.")] for p in ("to_q", "to_k", "to_v")]
            out[key.replace(".attention.to_q.", ".attention.qkv.")] = torch.cat(parts, 0)
            continue
        for new, old in ORIGINAL_NAMES:
            key = key.replace(new, old)
        out[key] = value
    return out


GGUF_KEEP = ("pad_token",)
"""Tensors a GGUF Z-Image transformer keeps in F32 (the pad tokens are used as whole rows, never as a layer's
weight, so they cannot be dequantized on the fly)."""


def build_tiny_z_image_gguf(path: Path) -> None:
    """Write `builtin:tiny-z-image-gguf` to `path`: `builtin:tiny-z-image` with its transformer stored as a GGUF
    file in the original layout (`transformer/diffusion_pytorch_model.gguf`, Q8_0 where the block size fits),
    as quantized Z-Image files are published."""
    from safetensors.torch import load_file

    from workers.loading.transformer_files import write_gguf

    build_tiny_z_image(path)
    weights = path / "transformer" / "diffusion_pytorch_model.safetensors"
    write_gguf(original_layout(load_file(str(weights))), weights.with_suffix(".gguf"), arch="z_image", keep=GGUF_KEEP)
    weights.unlink()


LORA_TARGETS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0", "feed_forward.w1",
                "feed_forward.w2", "feed_forward.w3")
"""The Z-Image transformer's block modules (name endings) `builtin:tiny-lora-z-image` changes."""

LORA_B_STD = 0.5
"""Spread of the Z-Image adapter's up matrices (as the Flux adapter's: a narrow transformer needs a larger update
for the image to change visibly)."""


def z_image_lora_weights() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name -> (A: rank x in, B: out x rank) for every attention and feed-forward Linear of tiny-z-image's
    transformer blocks (main and refiner blocks)."""
    from workers.builtins.loras import RANK, SEED

    gen = torch.Generator().manual_seed(SEED)
    out = {}
    for name, module in tiny_z_image_transformer().named_modules():
        if name.endswith(LORA_TARGETS) and isinstance(module, torch.nn.Linear):
            a = torch.randn(RANK, module.in_features, generator=gen) / module.in_features ** 0.5
            b = torch.randn(module.out_features, RANK, generator=gen) * LORA_B_STD
            out[name] = (a.contiguous(), b.contiguous())
    return out


def build_tiny_lora_z_image(path: Path) -> None:
    """Write `builtin:tiny-lora-z-image`: an update of tiny-z-image's transformer blocks in diffusers' layout
    (`transformer.layers.0.attention.to_q.lora_A.weight` ...), to `path/adapter.safetensors`."""
    from workers.builtins.loras import build_tiny_lora

    build_tiny_lora(path, prefix="transformer", weights=z_image_lora_weights())


BUILDERS = {"tiny-z-image": build_tiny_z_image, "tiny-z-image-turbo": build_tiny_z_image_turbo,
            "tiny-z-image-gguf": build_tiny_z_image_gguf,
            "tiny-lora-z-image": build_tiny_lora_z_image}
"""Built-in model name (after `builtin:`) to its generator (joined into `workers.builtins.registry.BUILDERS`)."""
