"""Riding out a Redis restart: a worker's state writes are retried while the connection is down."""
from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from sdq.state.errors import UNREACHABLE

log = logging.getLogger(__name__)

T = TypeVar("T")

REDIS_OUTAGE_LIMIT = 120.0
"""Seconds a worker keeps retrying one Redis call while the server is unreachable."""


def retry_redis(fn: Callable[[], T], limit: float = REDIS_OUTAGE_LIMIT) -> T:
    """`fn()`, retried with backoff (0.2 s doubling to 5 s) on connection errors for at most `limit`
    seconds. The Lua steps `fn` runs are safe to repeat: a step that ran but whose reply was lost
    changes nothing the second time (an ended job is still finalised by the sweeper)."""
    deadline = time.monotonic() + limit
    pause = 0.2
    while True:
        try:
            return fn()
        except UNREACHABLE as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("Redis unreachable (%s); retrying in %.1fs", exc, pause)
        time.sleep(pause)
        pause = min(5.0, pause * 2)
