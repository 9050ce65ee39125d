"""The result cache: an item identical to one already made is answered from the stored object.

Torch-free. `cache_key` names what makes an image's bytes; `ResultIndex` maps such a key to the
object that holds the image (``sdq:rcache:<key>`` -> JSON entry, expiring `RESULT_CACHE_TTL` after
it was made or last served). The worker looks items up before it loads a model and registers each
result it stores (`workers.running.resultcache`). See docs/USAGE.md "Result cache".
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import redis

from sdq import defaults
from sdq.records import Item
from sdq.state.keys import RESULT_INDEX_PREFIX

KEY_FORMAT = "1"
"""Version of the key's recipe: a new one (new inputs, or generation code that changes the bytes)
leaves every older entry unused."""

"""Redis key prefix of result-cache entries."""


@dataclass(frozen=True)
class Maker:
    """What a worker brings to an image: the model's weights, the device class and dtype, and the
    switches that change the bytes."""

    model: str
    weights: str
    """Digest of the model's files (`workers.loading.sources.WeightsHasher`)."""
    device_kind: str
    """`cpu` or `gpu` (`sdq.contract.worker_kind`)."""
    dtype: str
    safety_checker: bool
    """A flagged image comes back black with the checker on, unchanged with it off."""


def cache_key(maker: Maker, owner: str, pipeline: str, params: dict[str, Any], prompt: str,
              negative_prompt: str | None, seed: int, init_image_sha256: str | None, watermark: bool,
              images_sha256: dict[str, str] | None = None, adapters_sha256: dict[str, str] | None = None) -> str:
    """The result-cache key of one item: a SHA-256 over everything that decides its image's bytes.

    `params` are the item's generation parameters (all of them, so a new parameter is in the key
    at once); `owner` keeps tenants apart. Not in the key: job id, index, priority, webhook,
    the worker's name and its micro-batch size (numerical noise only); low-memory mode's tiled decodes
    differ, and the worker adds it to `params` (`workers.running.resultcache.LOW_MEMORY`). The
    contents of the item's further image inputs (`images_sha256`, e.g. a mask) and of its LoRA
    adapters' files (`adapters_sha256`, by id: a name pushed again with new weights is a new key) are
    in the key when it has any."""
    doc = {
        "v": KEY_FORMAT, **asdict(maker), "owner": owner or "", "pipeline": pipeline,
        "params": params, "prompt": prompt, "negative_prompt": negative_prompt or "", "seed": int(seed),
        "init_image": init_image_sha256, "watermark": bool(watermark),
    }
    if images_sha256:
        doc["images"] = images_sha256
    if adapters_sha256:
        doc["adapters"] = adapters_sha256
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def wants_cache(item: Item) -> bool:
    """Whether an item may be answered from, and recorded in, the cache (`cache: false` opts out)."""
    return item.cache is not False


class ResultIndex:
    """Cache key -> `{job, index, key, thumb_key?, bytes}` of a stored result. Pass the connection in."""

    def __init__(self, client: redis.Redis, ttl: int = defaults.RESULT_CACHE_TTL) -> None:
        self.redis, self.ttl = client, ttl

    def lookup(self, keys: list[str]) -> list[dict[str, Any] | None]:
        """The entries of `keys` (None where there is none), in order, with one MGET."""
        if not keys:
            return []
        return [json.loads(raw) if raw else None for raw in self.redis.mget([RESULT_INDEX_PREFIX + k for k in keys])]

    def register(self, key: str, entry: dict[str, Any]) -> None:
        """Point `key` at a stored result (the newest one wins)."""
        self.redis.set(RESULT_INDEX_PREFIX + key, json.dumps(entry, separators=(",", ":")), ex=self.ttl)

    def touch(self, key: str) -> None:
        """An entry was served: it lives another `ttl`."""
        self.redis.expire(RESULT_INDEX_PREFIX + key, self.ttl)

    def forget(self, key: str) -> None:
        """Drop an entry (its object is gone)."""
        self.redis.delete(RESULT_INDEX_PREFIX + key)

    def clear(self) -> int:
        """Drop every entry (stored objects stay); returns how many."""
        n = 0
        batch: list[bytes] = []
        for name in self.redis.scan_iter(match=RESULT_INDEX_PREFIX + "*", count=1000):
            batch.append(name)
            if len(batch) >= 1000:
                n += self.redis.delete(*batch)
                batch.clear()
        if batch:
            n += self.redis.delete(*batch)
        return n

    def count(self) -> int:
        """Entries now (scans the keyspace: for operators, not hot paths)."""
        return sum(1 for _ in self.redis.scan_iter(match=RESULT_INDEX_PREFIX + "*", count=1000))
