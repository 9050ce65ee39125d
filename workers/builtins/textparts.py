"""Tokenizers of the newer families' text encoders, built locally for the tiny built-ins (never downloaded).

Qwen2.5-VL (Qwen-Image), Qwen3 (Z-Image, Flux.2 Klein) share one byte-level BPE tokenizer class: here with
the 256 byte symbols as its whole vocabulary (no merges, so one token per byte) and the chat and vision special
tokens the pipelines' prompt templates write.
"""
from __future__ import annotations

QWEN_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                       "<|video_pad|>")
"""Special tokens of Qwen's chat and vision templates (after `<|endoftext|>`, the pad and end token)."""

QWEN_MAX_LENGTH = 1024
"""`model_max_length` of the tiny Qwen tokenizer."""


def qwen_tokenizer():
    """A `Qwen2TokenizerFast` over bytes: ids 0-255 are the bytes, then `<|endoftext|>` and
    `QWEN_SPECIAL_TOKENS` (`len(tokenizer)` is the encoder's smallest vocabulary size)."""
    from transformers import Qwen2TokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = bytes_to_unicode()
    vocab = {symbols[b]: b for b in range(256)}
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=[], model_max_length=QWEN_MAX_LENGTH)
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    return tokenizer
