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

from sdq.models import builtin_path

BUILTIN_PREFIX = "builtin:"

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


def build_tiny_sd(path: Path) -> None:
    """Write `builtin:tiny-sd`, a StableDiffusionPipeline, to `path`."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    tokenizer = tiny_tokenizer()
    vocab = tokenizer.get_vocab()
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(), unet=tiny_unet(), tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"]),
        scheduler=PNDMScheduler(**SD_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)


BUILDERS: dict[str, Callable[[Path], None]] = {"tiny-sd": build_tiny_sd}
"""Built-in model name (after `builtin:`) to its generator."""


def ensure_builtin(models_dir: Path, name: str) -> Path:
    """Generate built-in `name` into the cache unless present; return its folder."""
    if name not in BUILDERS:
        raise KeyError(name)
    target = builtin_path(models_dir, name)
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        BUILDERS[name](tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race: its copy is identical
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
