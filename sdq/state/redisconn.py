"""Connections to sdq's Redis (broker and job state): a plain Redis URL, or Redis Sentinel.

``SDQ_REDIS_URL`` is either a redis-py URL (``redis://[:PASSWORD@]HOST:PORT/DB``, ``rediss://``,
``unix://``) or, for high availability,

    sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]

naming the Sentinels that watch the primary called MASTER_NAME (PASSWORD is the primary's). Every
process then asks the Sentinels for the current primary, and again after a failover: the job state
through redis-py's `Sentinel`, the Celery broker through kombu's `sentinel://` transport.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from sdq.exceptions import ConfigError

SENTINEL_SCHEME = "sentinel"


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    password: str | None = None


def parse_sentinel(url: str) -> SentinelUrl | None:
    """The Sentinel settings of `url`, or None for a plain Redis URL; ConfigError when malformed."""
    if not url.startswith(f"{SENTINEL_SCHEME}://"):
        return None
    rest = url[len(SENTINEL_SCHEME) + 3:]
    auth, _, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    parts = [p for p in path.split("/") if p]
    if not hosts or not parts or len(parts) > 2:
        raise ConfigError(f"SDQ_REDIS_URL={url!r}: expected sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]"
                          "/MASTER_NAME[/DB]")
    sentinels = []
    for host in hosts.split(","):
        split = urlsplit(f"//{host}")
        try:
            port = split.port or 26379
        except ValueError:
            port = None
        if not split.hostname or port is None:
            raise ConfigError(f"SDQ_REDIS_URL={url!r}: bad Sentinel address {host!r} (HOST:PORT)")
        sentinels.append((split.hostname, port))
    if len(parts) == 2 and not parts[1].isdigit():
        raise ConfigError(f"SDQ_REDIS_URL={url!r}: the database must be a number, got {parts[1]!r}")
    password = unquote(auth.partition(":")[2]) or None if auth else None
    return SentinelUrl(tuple(sentinels), unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0, password)


def text(reply: bytes | str | None) -> str | None:
    """A Redis reply as text: sdq's clients return bytes (the job store keeps binary-safe replies), so
    string replies are decoded here, once, as UTF-8."""
    return reply.decode() if isinstance(reply, bytes) else reply


def connect(url: str, **options) -> redis.Redis:
    """A Redis client for `url`; with Sentinel, one that follows the current primary."""
    spec = parse_sentinel(url)
    if spec is None:
        return redis.Redis.from_url(url, **options)
    timeouts = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    return Sentinel(list(spec.sentinels), sentinel_kwargs=timeouts).master_for(
        spec.master, db=spec.db, password=spec.password, **options)


def broker(url: str) -> tuple[str, dict[str, str]]:
    """Celery's broker URL for `url`, and the transport options it needs (the Sentinel master name)."""
    spec = parse_sentinel(url)
    if spec is None:
        return url, {}
    auth = f":{quote(spec.password, safe='')}@" if spec.password else ""
    hosts = ";".join(f"{SENTINEL_SCHEME}://{auth}{host}:{port}/{spec.db}" for host, port in spec.sentinels)
    return hosts, {"master_name": spec.master}
