"""The locally built Qwen tokenizer: bytes in order, the template's special tokens as single ids."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_qwen_tokenizer_round_trips_text_and_keeps_special_tokens_whole():
    from workers.builtins.textparts import QWEN_SPECIAL_TOKENS, qwen_tokenizer

    tok = qwen_tokenizer()
    ids = tok("<|im_start|>user\nA cat, héllo<|im_end|>").input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert ids[1:5] == list(b"user")
    assert tok.decode(ids[1:-1]) == "user\nA cat, héllo"
    assert len(tok) == 256 + 1 + len(QWEN_SPECIAL_TOKENS)
