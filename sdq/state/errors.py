"""The state layer's errors: what callers outside `sdq.state` catch instead of naming the Redis client's.

`StateError` is redis-py's `RedisError` (every error of the store: connection lost, timeout, a
script's error), so a caller catches it without importing `redis`; `UNREACHABLE` are the ones
meaning Redis cannot be reached now (a 503 at the producer, a wait at a worker).
"""
from __future__ import annotations

from redis.exceptions import ConnectionError as _ConnectionError
from redis.exceptions import RedisError as StateError
from redis.exceptions import TimeoutError as _TimeoutError

UNREACHABLE: tuple[type[StateError], ...] = (_ConnectionError, _TimeoutError)
"""The errors of a Redis that cannot be reached now (down, restarting, a failover, a timeout)."""

__all__ = ["StateError", "UNREACHABLE"]
