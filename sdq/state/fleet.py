"""The fleet: workers' capability records in Redis, refreshed by heartbeat.

``sdq:worker:<name>`` holds a worker's record as JSON and expires `HEARTBEAT_TTL` seconds
after its last refresh, so a dead worker leaves the fleet on its own; ``sdq:workers`` is the
set of names ever seen (pruned on read).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import redis

from sdq import defaults
from sdq.memory import fit, load_cast
from sdq.state.keys import FLEET_EVENTS_CHANNEL, FLEET_KEY, worker_key, worker_queue_keys
from sdq.state.redisconn import text


def publish(client: redis.Redis, record: dict[str, Any], ttl: int = defaults.HEARTBEAT_TTL) -> None:
    """Write (or refresh) a worker's capability record, and say so on the fleet's event channel."""
    pipe = client.pipeline(transaction=False)
    pipe.set(worker_key(record["name"]), json.dumps(record), ex=ttl)
    pipe.sadd(FLEET_KEY, record["name"])
    pipe.publish(FLEET_EVENTS_CHANNEL, record["name"])
    pipe.execute()


def forget(client: redis.Redis, names: list[str]) -> None:
    """Workers that left: out of the fleet set, and their own queues (lists and binding) deleted, so
    nothing of a departed worker stays in Redis. Whatever waited there was a straggler backup, a
    second copy of an item whose first run goes on (or is re-queued by the reaper)."""
    if not names:
        return
    pipe = client.pipeline(transaction=False)
    pipe.srem(FLEET_KEY, *names)
    for name in names:
        pipe.delete(*worker_queue_keys(name))
    pipe.execute()


def remove(client: redis.Redis, name: str) -> None:
    """Take a worker out of the fleet at once (clean shutdown)."""
    client.delete(worker_key(name))
    forget(client, [name])


def live_workers(client: redis.Redis) -> list[dict[str, Any]]:
    """Capability records of live workers, sorted by name."""
    names = sorted(map(text, client.smembers(FLEET_KEY)))
    if not names:
        return []
    records = client.mget([worker_key(n) for n in names])
    forget(client, [n for n, r in zip(names, records) if r is None])
    return [json.loads(r) for r in records if r is not None]


def serving(workers: list[dict[str, Any]], queue: str, model: str) -> list[dict[str, Any]]:
    """Live workers that consume `queue` and may load `model`."""
    return [w for w in workers if queue in w.get("queues", ())
            and (not w.get("models") or model in w["models"])]


def able(workers: list[dict[str, Any]], queue: str, model: str, pixels: int, requires: dict[str, Any]) -> list[dict[str, Any]]:
    """Live workers that may take work of `queue` and `model` with images of `pixels` pixels and
    `requires` (`min_memory_gb`, the family's `memory`): what each worker's router checks before it runs one."""
    out = []
    for w in serving(workers, queue, model):
        if pixels > (w.get("max_pixels") or pixels):
            continue
        dtype = w.get("dtype") or "fp32"
        if not fit(requires, dtype, pixels, w.get("memory_total_gb"), load_cast(w.get("device") or "", dtype),
                   w.get("offload") or "never").fits:  # whole, or offloaded where its `--offload` lets it
            continue
        out.append(w)
    return out


def signature(workers: list[dict[str, Any]]) -> str:
    """Names the fleet as it is: changes when a worker joins, leaves or restarts."""
    seen = sorted((str(w.get("name")), str(w.get("started_at"))) for w in workers)
    return hashlib.sha256(json.dumps(seen).encode()).hexdigest()[:32]


def claimed_after(current: dict[str, Any]) -> list[int]:
    """From a record's `current_item`: the claimed items a worker makes after the batch it is making
    now (`items` in run order, `running` the batch)."""
    items, running = current.get("items") or [], current.get("running") or []
    last = max((items.index(i) for i in running if i in items), default=len(items) - 1 if running else -1)
    return items[last + 1:]


def held(current: dict[str, Any] | None, now: float) -> float:
    """From a record's `current_item`: how many items the worker holds, claimed and not finished. A
    batch of several items counts by the part of its expected time still ahead (`since`,
    `expected_s`): all its items end together, so a batch nearly done frees the worker for more at
    once; a single item counts whole until it ends (the simulation shows slower workers otherwise
    taking items a faster one is about to be free for)."""
    if not current:
        return 0.0
    running = len(current.get("running") or [])
    if running > 1 and current.get("expected_s"):
        running *= max(0.0, 1.0 - (now - current["since"]) / current["expected_s"])
    return running + len(claimed_after(current))


def events(client: redis.Redis) -> redis.client.PubSub:
    """A subscription to the fleet's event channel (a worker's name each time it publishes its record)."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(FLEET_EVENTS_CHANNEL)
    return pubsub
