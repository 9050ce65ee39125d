"""The base of the store's two sides: one Redis connection with the store's scripts, its outbox
and the fleet's records. Nothing outside `sdq.state` holds the connection; it asks these methods."""
from __future__ import annotations

import logging

import redis

from sdq import defaults
from sdq.records import WorkerRecord
from sdq.state import fleet
from sdq.state.errors import StateError
from sdq.state.outbox import Outbox
from sdq.state.scripts import register

log = logging.getLogger(__name__)


class StoreBase:
    """A connection, its scripts (`scripts`), its outbox (`outbox`) and the fleet. Pass the connection in."""

    def __init__(self, client: redis.Redis, outbox_lease: float = defaults.OUTBOX_LEASE) -> None:
        self.redis = client
        self.scripts = register(client)
        self.outbox = Outbox(client, outbox_lease, self.scripts)

    def published(self, *members: str) -> None:
        """Outbox entries whose messages this caller published: removed. An error here is logged, not
        raised: the state is recorded and its message sent; an entry left behind only sends a duplicate
        that the start script drops."""
        try:
            self.outbox.done(*members)
        except StateError as exc:
            log.warning("outbox entries %s stay after their publish (%s); their copies will be dropped", members, exc)

    def live_workers(self) -> list[WorkerRecord]:
        """Capability records of live workers, sorted by name (`sdq.state.fleet.live_workers`)."""
        return fleet.live_workers(self.redis)

    def publish_worker(self, record: WorkerRecord, ttl: int = defaults.HEARTBEAT_TTL) -> None:
        """Write (or refresh) a worker's capability record (`sdq.state.fleet.publish`)."""
        fleet.publish(self.redis, record, ttl)

    def remove_worker(self, name: str) -> None:
        """Take a worker out of the fleet at once (`sdq.state.fleet.remove`)."""
        fleet.remove(self.redis, name)

    def fleet_events(self) -> fleet.Events:
        """A subscription to the fleet's event channel (`sdq.state.fleet.events`)."""
        return fleet.events(self.redis)

    def ping(self) -> bool:
        """Whether Redis answers (raises `StateError` when it does not)."""
        return bool(self.redis.ping())
