"""2. Submission: one request of N prompts vs raw Celery `group(...).apply_async()` of N no-ops.

No worker runs, so every published message stays in the Redis broker lists. A poller thread
counts the messages in those lists every few milliseconds; "in broker" is the first moment the
count reached its final value, and the final messages are decoded to check they hold all N items.
"""
from __future__ import annotations

import base64
import json
import statistics
import threading
import time
from typing import Any

import redis

from bench.common import Bench, bench_stack, main_for, prompts, target, MODEL
from sdq.celery_app import make_celery

SIZES = {"full": 10_000, "quick": 1_000}
REPEATS = {"full": 5, "quick": 1}
LIMIT_S = {"full": 0.2, "quick": 1.0}
"""Seconds until every item is in the broker that the benchmark aims at, by run size."""
NOOP_QUEUE = "bench.noop"
PARAMS = {"width": 64, "height": 64, "steps": 4, "seed": 1}


def queue_keys(r: redis.Redis, prefix: str) -> list[bytes]:
    """Broker lists (a queue and its priority sub-queues) whose name starts with `prefix`."""
    return [k for k in r.scan_iter(match=f"{prefix}*", count=1000, _type="list")]


class BrokerPoller(threading.Thread):
    """Counts messages in the broker lists under `prefix` until stopped; remembers (time, count)."""

    def __init__(self, url: str, prefix: str, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.r = redis.Redis.from_url(url)
        self.prefix, self.interval = prefix, interval
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            keys = queue_keys(self.r, self.prefix)
            pipe = self.r.pipeline(transaction=False)
            for k in keys:
                pipe.llen(k)
            self.samples.append((time.time(), sum(pipe.execute()) if keys else 0))
            time.sleep(self.interval)

    def settle(self, quiet: float = 1.0, timeout: float = 120) -> float:
        """Wait until the count stayed unchanged for `quiet` s; returns when it first reached that value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(quiet / 2)
            recent = [c for t, c in self.samples if t >= time.time() - quiet]
            if len(recent) > 2 and len(set(recent)) == 1 and recent[0] > 0:
                break
        self.stopped.set()
        self.join()
        final = self.samples[-1][1]
        return next(t for t, c in self.samples if c == final)


def broker_items(r: redis.Redis, prefix: str) -> tuple[int, int]:
    """(messages, items) in the broker lists under `prefix` (an sdq message carries a chunk of items)."""
    messages = items = 0
    for key in queue_keys(r, prefix):
        for raw in r.lrange(key, 0, -1):
            messages += 1
            msg = json.loads(raw)
            body = msg["body"]
            if msg.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            _, kwargs, _ = json.loads(body)
            items += len(kwargs["chunk"]["items"]) if "chunk" in kwargs else 1
    return messages, items


def clear(r: redis.Redis, prefix: str) -> None:
    """Drop the broker lists under `prefix`."""
    keys = queue_keys(r, prefix)
    if keys:
        r.delete(*keys)


def sdq_submit(bench: Bench, n: int) -> dict[str, Any]:
    """One POST of `n` prompts: seconds to the 202 and until every message was in the broker."""
    url = bench.stack.env["SDQ_REDIS_URL"]
    body = {"prompts": prompts(n), "model": MODEL, "params": PARAMS}
    poller = BrokerPoller(url, "sdq.")
    poller.start()
    t0 = time.time()
    resp = bench.client.submit(body)
    t_202 = time.time()
    t_broker = poller.settle()
    messages, items = broker_items(bench.r, "sdq.")
    clear(bench.r, "sdq.")
    if items != n:
        raise RuntimeError(f"broker holds {items} items of {n}")
    return {"to_202_s": round(t_202 - t0, 4), "in_broker_s": round(t_broker - t0, 4), "messages": messages,
            "items": items, "job": resp["id"], "body_bytes": len(json.dumps(body))}


def celery_group(url: str, n: int) -> dict[str, Any]:
    """Raw Celery: `group` of `n` no-op signatures, `apply_async()` on the same Redis and settings."""
    from celery import group

    app = make_celery(url)

    @app.task(name="bench.noop")
    def noop() -> None:
        return None

    poller = BrokerPoller(url, NOOP_QUEUE)
    poller.start()
    t0 = time.time()
    group(noop.s() for _ in range(n)).apply_async(queue=NOOP_QUEUE)
    t_done = time.time()
    t_broker = poller.settle()
    r = redis.Redis.from_url(url)
    messages, _ = broker_items(r, NOOP_QUEUE)
    clear(r, NOOP_QUEUE)
    if messages != n:
        raise RuntimeError(f"broker holds {messages} no-op messages of {n}")
    return {"apply_async_s": round(t_done - t0, 4), "in_broker_s": round(t_broker - t0, 4), "messages": messages}


def run(opts) -> dict[str, Any]:
    """Alternate sdq submissions and raw Celery groups; report medians."""
    size = "quick" if opts.quick else "full"
    n, repeats = SIZES[size], REPEATS[size]
    with bench_stack("submit", opts) as bench:
        url = bench.stack.env["SDQ_REDIS_URL"]
        bench.client.submit({"prompts": ["warm-up"], "model": MODEL, "params": PARAMS})  # first-request costs
        clear(bench.r, "sdq.")
        sdq, raw = [], []
        for _ in range(repeats):
            sdq.append(sdq_submit(bench, n))
            raw.append(celery_group(url, n))
    med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
    out = {"n": n, "sdq": sdq, "celery_group": raw,
           "sdq_to_202_s": med(sdq, "to_202_s"), "sdq_in_broker_s": med(sdq, "in_broker_s"),
           "celery_apply_async_s": med(raw, "apply_async_s"), "celery_in_broker_s": med(raw, "in_broker_s")}
    out["ratio_in_broker"] = round(out["sdq_in_broker_s"] / out["celery_in_broker_s"], 4)
    out["ratio_to_202"] = round(out["sdq_to_202_s"] / out["celery_apply_async_s"], 4)
    out["table"] = [
        ["", "to 202 / apply_async() returned, s", "all items in broker, s", "messages"],
        [f"sdq POST /v1/jobs, {n} prompts", out["sdq_to_202_s"], out["sdq_in_broker_s"], sdq[0]["messages"]],
        [f"raw Celery group of {n} no-ops", out["celery_apply_async_s"], out["celery_in_broker_s"], raw[0]["messages"]],
        ["ratio sdq / Celery", out["ratio_to_202"], out["ratio_in_broker"], ""],
    ]
    out["targets"] = [target("time to all items in broker, sdq / raw Celery", out["ratio_in_broker"], 1.0),
                      target(f"sdq time to all {n} items in broker, s", out["sdq_in_broker_s"], LIMIT_S[size])]
    return out


if __name__ == "__main__":
    raise SystemExit(main_for("submit", run, __doc__.splitlines()[0]))
