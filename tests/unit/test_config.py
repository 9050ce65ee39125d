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


def test_worker_timings_come_from_the_same_parser():
    s = Settings.from_env({"SDQ_HEARTBEAT_INTERVAL": "0.5", "SDQ_HEARTBEAT_TTL": "2", "SDQ_REAPER_INTERVAL": "1",
                           "SDQ_FINALIZE_RESEND": "3", "SDQ_STALL_TIMEOUT": "8", "SDQ_S3_BACKOFF_CAP": "2",
                           "SDQ_S3_OUTAGE_LIMIT": "30", "SDQ_MAX_ATTEMPTS": "5"})
    assert (s.heartbeat_interval, s.heartbeat_ttl, s.reaper_interval, s.finalize_resend, s.stall_timeout,
            s.s3_backoff_cap, s.s3_outage_limit, s.max_attempts) == (0.5, 2, 1.0, 3.0, 8.0, 2.0, 30.0, 5)
    empty = Settings.from_env({"SDQ_STALL_TIMEOUT": ""})
    assert (empty.stall_timeout, empty.max_attempts) == (defaults.STALL_TIMEOUT, defaults.MAX_ATTEMPTS)


@pytest.mark.parametrize("name, raw, words", [("SDQ_HEARTBEAT_TTL", "2.5", "is not an integer"),
                                              ("SDQ_MAX_ATTEMPTS", "three", "is not an integer"),
                                              ("SDQ_STALL_TIMEOUT", "10s", "is not a number")])
def test_a_bad_timing_names_the_variable_and_value(name, raw, words):
    with pytest.raises(ConfigError, match=f"{name}={raw!r} {words}"):
        Settings.from_env({name: raw})


def test_every_default_is_defined_once():
    """A second assignment of a name in sdq/defaults.py silently replaces the first (a CLI setting once
    replaced the worker's step-progress throttle of the same name)."""
    import ast
    from pathlib import Path

    import sdq.defaults

    tree = ast.parse(Path(sdq.defaults.__file__).read_text(encoding="utf-8"))
    names = [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]
    assert sorted({n for n in names if names.count(n) > 1}) == []
