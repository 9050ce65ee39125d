"""Built-in tiny Flux.2: `builtin:tiny-flux2`, a real Flux2KleinPipeline with small random weights.

Like the other tiny built-ins (`workers.builtins.registry`): generated locally from fixed seeds and fixed configs,
never downloaded, shaped like FLUX.2 [klein] so that its code paths are taken: the 32-channel Flux.2 VAE whose
latents are patchified 2x2 into 128 channels and normalised by its batch-norm statistics, a transformer with
double- and single-stream blocks, 4-axis rotary embeddings and no guidance input, a Qwen3 text encoder read at
layers 9, 18 and 27 (so it has 28 layers, each a few numbers wide) with the byte-level Qwen tokenizer and a
Qwen3-style chat template, and Flux.2's flow-matching scheduler. `builtin:tiny-flux2-distilled` is the same
model saved as a step-distilled Klein (`is_distilled`: no classifier-free guidance, few steps);
`builtin:tiny-flux2-gguf` is `tiny-flux2` with its transformer stored as a Q8_0 GGUF file, and
`builtin:tiny-lora-flux2` a LoRA adapter for it.

Flux.2 dev (`Flux2Pipeline`, a Mistral3 encoder) is `builtin:tiny-flux2-dev` (`workers.builtins.flux2dev`), built
from this module's VAE and transformer shape.
"""
from __future__ import annotations

from pathlib import Path

import torch

from workers.builtins.flux import FLUX_DEV_SCHEDULER

QWEN3_WIDTH = 16
"""`hidden_size` of the tiny Qwen3 encoder (2560 in Klein 4B's Qwen3-4B)."""

QWEN3_LAYERS = 28
"""Layers of the tiny Qwen3 encoder: the Klein pipelines stack hidden states 9, 18 and 27 (Qwen3-4B has 36)."""

QWEN3_INIT_STD = 1.0
"""Weight init std of the tiny Qwen3 encoder: at transformers' default (0.02) its hidden states are so small that
the prompt hardly changes the image (about 0.5/255 mean abs difference between two prompts)."""

KLEIN_TEXT_LAYERS = 3
"""Hidden-state layers the pipelines concatenate: the transformer's `joint_attention_dim` is 3 x the encoder's width."""

FLUX2_LATENT_CHANNELS = 32
"""Latent channels of the Flux.2 VAE (as published); 2x2 patches make the transformer's 128 input channels."""

QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
"""Qwen3's chat template in short: the messages in ChatML, then the assistant's turn with an empty thinking block
when `enable_thinking` is false (as Flux2KleinPipeline asks)."""


def qwen3_tokenizer():
    """The byte-level Qwen tokenizer (`workers.builtins.textparts`) with Qwen3's chat template."""
    from workers.builtins.textparts import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def qwen3_encoder(vocab_size: int, pad_id: int, seed: int = 41):
    """A `Qwen3ForCausalLM` of `QWEN3_LAYERS` layers, `QWEN3_WIDTH` wide (random weights from `seed`)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=vocab_size, hidden_size=QWEN3_WIDTH, intermediate_size=2 * QWEN3_WIDTH,
                         num_hidden_layers=QWEN3_LAYERS, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=1024, pad_token_id=pad_id, tie_word_embeddings=True,
                         initializer_range=QWEN3_INIT_STD, use_cache=False)
    return Qwen3ForCausalLM(config).eval()


def flux2_vae(seed: int = 44):
    """A 4-block AutoencoderKLFlux2 (8x downsampling, 32 latent channels, 2x2 patches), like the published one,
    its latent batch-norm statistics measured on pictures (`_calibrate`) as the published one's are."""
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        in_channels=3, out_channels=3, latent_channels=FLUX2_LATENT_CHANNELS, block_out_channels=(32,) * 4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=32, sample_size=128,
    ).eval()
    _calibrate(vae, seed)
    return vae


def _calibrate(vae, seed: int) -> None:
    """Set the VAE's latent batch-norm statistics to those of its (patchified) latents of smooth random pictures:
    the pipelines then normalise encoded images to about unit variance, like their noise, as the trained VAE's
    statistics do. At the fresh defaults (mean 0, variance 1) an encoded image is ~0.2 wide and a reference or init
    image hardly changes the tiny model's output."""
    gen = torch.Generator().manual_seed(seed)
    pictures = torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8, generator=gen) * 2 - 1, size=(64, 64),
                                               mode="bicubic", align_corners=False).clamp(-1, 1)
    with torch.no_grad():
        latents = vae.encode(pictures).latent_dist.mode()
        b, c, h, w = latents.shape
        patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        vae.bn.running_mean.copy_(patches.mean(dim=(0, 2, 3)))
        vae.bn.running_var.copy_(patches.var(dim=(0, 2, 3)))


def flux2_transformer(seed: int = 43, guidance_embeds: bool = False):
    """A Flux2Transformer2DModel with 1 double- and 2 single-stream blocks, 2 heads of 16 (rotary axes 4 x 4),
    128 input channels, joint attention over the encoder's 3 stacked layers; `guidance_embeds`: dev's distilled
    guidance input (Klein has none)."""
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * FLUX2_LATENT_CHANNELS, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=KLEIN_TEXT_LAYERS * QWEN3_WIDTH, timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=guidance_embeds,
    ).eval()


def klein_components() -> dict:
    """The components of `builtin:tiny-flux2`, by Flux2KleinPipeline's argument names."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tokenizer = qwen3_tokenizer()
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER), vae=flux2_vae(),
        text_encoder=qwen3_encoder(len(tokenizer), tokenizer.pad_token_id), tokenizer=tokenizer,
        transformer=flux2_transformer(),
    )


def build_tiny_flux2(path: Path, distilled: bool = False) -> None:
    """Write `builtin:tiny-flux2`, a Flux2KleinPipeline shaped like FLUX.2 [klein] base, to `path`; with
    `distilled`, `builtin:tiny-flux2-distilled` (the same weights, saved with `is_distilled`)."""
    from diffusers import Flux2KleinPipeline

    Flux2KleinPipeline(**klein_components(), is_distilled=distilled).save_pretrained(path, safe_serialization=True)


def build_tiny_flux2_distilled(path: Path) -> None:
    """Write `builtin:tiny-flux2-distilled`, a step-distilled Flux2KleinPipeline, to `path`."""
    build_tiny_flux2(path, distilled=True)


def build_tiny_flux2_gguf(path: Path) -> None:
    """Write `builtin:tiny-flux2-gguf` to `path`: `builtin:tiny-flux2` with its transformer stored as a GGUF file
    (`transformer/diffusion_pytorch_model.gguf`, Q8_0 where the block size fits: `transformer_files.write_gguf`)."""
    from safetensors.torch import load_file

    from workers.loading.transformer_files import write_gguf

    build_tiny_flux2(path)
    weights = path / "transformer" / "diffusion_pytorch_model.safetensors"
    write_gguf(load_file(str(weights)), weights.with_suffix(".gguf"))
    weights.unlink()


FLUX2_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                      "attn.add_v_proj", "attn.to_add_out", "attn.to_qkv_mlp_proj", "attn.to_out")
"""The Flux.2 transformer's block modules (name endings) `builtin:tiny-lora-flux2` changes: the double blocks'
image and text attention, the single blocks' fused QKV+MLP input and their output projection."""

FLUX2_LORA_B_STD = 0.5
"""Spread of the Flux.2 adapter's up matrices (as `workers.builtins.loras.FLUX_B_STD`: a 32-wide transformer)."""


def build_tiny_lora_flux2(path: Path) -> None:
    """Write `builtin:tiny-lora-flux2`: a random rank-4 update of tiny-flux2's transformer blocks in diffusers'
    layout (`transformer.<module>.lora_A/lora_B`), with no metadata: its family is read from its tensor names."""
    from workers.builtins.loras import build_tiny_lora, lora_weights

    weights = lora_weights(flux2_transformer(), FLUX2_LORA_TARGETS, FLUX2_LORA_B_STD)
    build_tiny_lora(path, prefix="transformer", weights=weights)


BUILDERS = {"tiny-flux2": build_tiny_flux2, "tiny-flux2-distilled": build_tiny_flux2_distilled,
            "tiny-flux2-gguf": build_tiny_flux2_gguf, "tiny-lora-flux2": build_tiny_lora_flux2}
"""Built-in model name (after `builtin:`) to its generator (joined into `workers.builtins.registry.BUILDERS`)."""
