"""Settings from the environment: defaults, parsing, errors that name the variable."""
from __future__ import annotations

import pytest

from sdq import defaults
from sdq.config import Settings, parse_tokens
from sdq.exceptions import ConfigError


def test_an_empty_environment_gives_the_defaults():
    s = Settings.from_env({})
    assert (s.redis_url, s.max_items, s.max_pixels) == (defaults.REDIS_URL, defaults.MAX_ITEMS, defaults.MAX_PIXELS)


def test_values_are_parsed_and_overrides_win():
    s = Settings.from_env({"SDQ_MAX_ITEMS": "7", "SDQ_WEBHOOK_ALLOW_PRIVATE": "1"}, max_pixels=64)
    assert (s.max_items, s.webhook_allow_private, s.max_pixels) == (7, True, 64)


def test_a_bad_integer_names_the_variable_and_value():
    with pytest.raises(ConfigError, match="SDQ_MAX_ITEMS='many'"):
        Settings.from_env({"SDQ_MAX_ITEMS": "many"})


def test_tokens_map_to_owners():
    assert parse_tokens("alice:t1, bob:t2", "SDQ_API_TOKENS") == {"t1": "alice", "t2": "bob"}
