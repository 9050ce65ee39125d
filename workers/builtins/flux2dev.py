"""Built-in tiny Flux.2 dev: `builtin:tiny-flux2-dev`, a real Flux2Pipeline with small random weights.

Generated locally from fixed seeds and configs like the other tiny built-ins, never downloaded, shaped like
FLUX.2 [dev] so that its code path runs: a `Mistral3ForConditionalGeneration` text encoder (a Pixtral vision tower,
a projector and a Mistral language model, each a few numbers wide) read at hidden-state layers 10, 20 and 30, a
transformer with dev's distilled-guidance input, and the Flux.2 VAE and scheduler `builtin:tiny-flux2` (Klein) has.

The published model's `tokenizer` is a `PixtralProcessor`, which transformers only builds with torchvision (not
installed beside this CPU torch). Flux2Pipeline's prompt path calls nothing of it but `apply_chat_template` on
text-only messages (the image half serves only `upsample_prompt`, which sdq does not call), so the built-in ships a
tokenizer alone: byte-level BPE over the 256 bytes with Mistral's control tokens and a chat template that writes
Mistral Small 3.1's format (`<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST]`). One token per byte: the
template and Flux.2 dev's system message take 173 of the `max_sequence_length` tokens, the prompt the rest.
"""
from __future__ import annotations

from pathlib import Path

import torch

from workers.builtins.flux import FLUX_DEV_SCHEDULER
from workers.builtins.flux2 import QWEN3_INIT_STD, QWEN3_WIDTH, flux2_transformer, flux2_vae

MISTRAL_WIDTH = QWEN3_WIDTH
"""`hidden_size` of the tiny Mistral language model (5120 in Mistral Small 3.1): the transformer's
`joint_attention_dim` is `KLEIN_TEXT_LAYERS` x this, as for Klein."""

MISTRAL_LAYERS = 31
"""Layers of the tiny Mistral model: Flux2Pipeline stacks hidden states 10, 20 and 30, which are then all
intermediate layers (not the final norm's output), as in the 40-layer Mistral Small 3.1."""

MISTRAL_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                          "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]")
"""Mistral's control tokens the chat template and the vision input use (ids 0-10; the bytes follow)."""

MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join('') %}{% endif %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{{ text }}[/INST]"
    "{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}"
)
"""Mistral Small 3.1's chat format in short: the system message and each user turn in their control tokens, content
given as a string or as a list of typed parts (Flux2Pipeline sends `[{"type": "text", "text": ...}]`)."""

MISTRAL_MAX_LENGTH = 1024
"""`model_max_length` of the tiny Mistral tokenizer."""

TRANSFORMER_GAIN = 2.0
"""Factor on the dev transformer's matrices (PyTorch's default init otherwise). Klein's classifier-free guidance
multiplies the prompt's effect; dev's distilled guidance does not, and at the default spread another prompt changed
the 64x64, 3-step image by ~0.04/255 on average (1/255 at most: a wrong prompt would pass an equality test); at
twice the spread by ~1.9/255 (21 at most), against ~40/255 for another seed."""


def mistral_tokenizer():
    """A byte-level BPE tokenizer (no merges: one token per byte) with `MISTRAL_SPECIAL_TOKENS` first and
    `MISTRAL_CHAT_TEMPLATE`; right padding with `<pad>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = bytes_to_unicode()
    vocab = {token: i for i, token in enumerate(MISTRAL_SPECIAL_TOKENS)}
    vocab.update({symbols[b]: len(MISTRAL_SPECIAL_TOKENS) + b for b in range(256)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", model_max_length=MISTRAL_MAX_LENGTH)
    named = {"<unk>", "<s>", "</s>", "<pad>"}
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in MISTRAL_SPECIAL_TOKENS if t not in named]})
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    return tokenizer


def mistral3_encoder(tokenizer, seed: int = 45):
    """A `Mistral3ForConditionalGeneration`: a 1-layer Pixtral vision tower (8-pixel patches), its projector, and a
    `MISTRAL_LAYERS`-layer Mistral `MISTRAL_WIDTH` wide, its weights drawn at Klein's encoder's spread
    (`QWEN3_INIT_STD`; random weights from `seed`)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    text = dict(model_type="mistral", vocab_size=len(tokenizer), hidden_size=MISTRAL_WIDTH,
                intermediate_size=2 * MISTRAL_WIDTH, num_hidden_layers=MISTRAL_LAYERS, num_attention_heads=2,
                num_key_value_heads=1, head_dim=8, max_position_embeddings=MISTRAL_MAX_LENGTH, sliding_window=None,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, initializer_range=QWEN3_INIT_STD, use_cache=False)
    vision = dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, head_dim=8, image_size=64, patch_size=8)
    config = Mistral3Config(text_config=text, vision_config=vision,
                            image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"))
    torch.manual_seed(seed)
    return Mistral3ForConditionalGeneration(config).eval()


def dev_components() -> dict:
    """The components of `builtin:tiny-flux2-dev`, by Flux2Pipeline's argument names (the VAE is Klein's)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tokenizer = mistral_tokenizer()
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER), vae=flux2_vae(),
        text_encoder=mistral3_encoder(tokenizer), tokenizer=tokenizer,
        transformer=dev_transformer(),
    )


def dev_transformer(seed: int = 46):
    """Klein's tiny transformer shape with dev's guidance input, its matrices scaled by `TRANSFORMER_GAIN`."""
    transformer = flux2_transformer(seed=seed, guidance_embeds=True)
    with torch.no_grad():
        for weight in transformer.parameters():
            if weight.ndim == 2:
                weight.mul_(TRANSFORMER_GAIN)
    return transformer


def build_tiny_flux2_dev(path: Path) -> None:
    """Write `builtin:tiny-flux2-dev`, a Flux2Pipeline shaped like FLUX.2 [dev], to `path`."""
    from diffusers import Flux2Pipeline

    Flux2Pipeline(**dev_components()).save_pretrained(path, safe_serialization=True)


BUILDERS = {"tiny-flux2-dev": build_tiny_flux2_dev}
"""Built-in model name (after `builtin:`) to its generator (joined into `workers.builtins.registry.BUILDERS`)."""
