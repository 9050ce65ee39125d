"""kombu's index of delivered, unacknowledged messages (`sdq.state.keys.UNACKED_INDEX_KEY`): the
leases a live worker renews on the messages it holds (`workers.fleet.leases`)."""
from __future__ import annotations

import time

import redis

from sdq.state.keys import UNACKED_INDEX_KEY


class UnackedIndex:
    """The broker's sorted set of held messages, delivery tag -> delivery time. Pass the connection in."""

    def __init__(self, client: redis.Redis, key: str = UNACKED_INDEX_KEY) -> None:
        self.client, self.key = client, key

    def renew(self, tags: list[str], now: float | None = None) -> list[str]:
        """Re-score the messages `tags` still held (``ZADD XX``: a tag acknowledged or restored meanwhile is
        never re-added) at `now`; returns the tags that were gone."""
        now = time.time() if now is None else now
        pipe = self.client.pipeline(transaction=False)
        for tag in tags:
            pipe.zadd(self.key, {tag: now}, xx=True, ch=True)
        return [tag for tag, n in zip(tags, pipe.execute()) if not n]
