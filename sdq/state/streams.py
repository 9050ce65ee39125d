"""Subscriptions to a job's event channel (`sdq.state.keys.events_channel`, published by the job
scripts and `Runs.publish_preview`) and the lengths of the broker's queues: what the producer watches."""
from __future__ import annotations

import json
from typing import Any

import redis

from sdq.state.base import StoreBase
from sdq.state.keys import KOMBU_PRIORITY_SEP, events_channel

PRIORITIES = 10
"""kombu's lists per queue: the queue's own name (priority 0), then one per priority step (1-9)."""


class JobEvents:
    """One subscription to a job's events, subscribed before anything is read (`close` it)."""

    def __init__(self, client: redis.Redis, job_id: str) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(events_channel(job_id))

    def next_raw(self, timeout: float) -> bytes | None:
        """The next event as published (JSON bytes), or None when none came within `timeout` seconds."""
        msg = self._pubsub.get_message(timeout=timeout)
        if msg is None or msg.get("type") != "message":
            return None
        data = msg["data"]
        return data if isinstance(data, bytes) else data.encode()

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next event, ``{"event": name, "data": {...}}``, or None within `timeout` seconds."""
        raw = self.next_raw(timeout)
        return json.loads(raw) if raw is not None else None

    def close(self) -> None:
        """Unsubscribe and give the connection back."""
        self._pubsub.close()


class Streams(StoreBase):
    """A job's events, and the broker's queue lengths."""

    def job_events(self, job_id: str) -> JobEvents:
        """A subscription to `job_id`'s events."""
        return JobEvents(self.redis, job_id)

    def queue_lengths(self, queues: list[str]) -> dict[str, int]:
        """Task messages waiting in each of `queues`, every priority level summed (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for q in queues:
            for pri in range(PRIORITIES):
                pipe.llen(q if pri == 0 else f"{q}{KOMBU_PRIORITY_SEP}{pri}")
        sizes = pipe.execute()
        return {q: sum(sizes[i * PRIORITIES:(i + 1) * PRIORITIES]) for i, q in enumerate(queues)}
