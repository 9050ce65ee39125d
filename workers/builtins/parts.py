"""The parts the built-in tiny models share: the SD scheduler config, a byte-level CLIP tokenizer and
text encoder, the 4-block VAE, a UNet and a safety checker, each small, random and seeded.

The builders (`workers.builtins.registry`, `workers.builtins.families`, `workers.builtins.fullsize`,
`workers.builtins.loras`) take their parts from here, so none of them imports another's registry.
"""
from __future__ import annotations

import torch

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
