"""Per-tenant limits: things a tenant holds open (event streams, uploads being decoded) and its
daily upload bytes.

Each kind keeps, per tenant, a Redis sorted set `sdq:held:<kind>:<owner>` of the uses in progress,
scored by the time each use expires by itself. Taking a slot drops the expired ones, counts, and
adds, in one Lua script (so two producers racing cannot both take the last slot); giving it back
removes it. A producer that dies holding a slot loses it at that expiry, and the key expires with
its last member: nothing is left behind. Daily upload bytes are a counter per tenant and UTC day
that expires two days later.
"""
from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from typing import Iterator

import redis

from sdq.exceptions import TooManyRequests
from sdq.state.keys import held_key, upload_bytes_key
from sdq.state.scripts import source



class TenantSlots:
    """At most `limit` concurrent uses of one kind per tenant, each held at most `hold_s` seconds."""

    def __init__(self, client: redis.Redis, kind: str, limit: int, hold_s: float, retry_after: int,
                 field: str) -> None:
        if limit < 1 or hold_s <= 0:
            raise ValueError(f"{kind} slots need limit >= 1 and hold_s > 0, got {limit} and {hold_s}")
        self.client, self.kind, self.limit, self.hold_s = client, kind, limit, hold_s
        self.retry_after, self.field = retry_after, field
        self._take = client.register_script(source("take_slot"))

    def take(self, owner: str) -> str:
        """Hold one slot for `owner`; returns its id. TooManyRequests (429, Retry-After) when all are held."""
        member, now = uuid.uuid4().hex, time.time()
        if not self._take(keys=[held_key(self.kind, owner)], args=[now, now + self.hold_s, member, self.limit]):
            raise TooManyRequests(self.field, f"you already have {self.limit} {self.kind} in progress (the limit "
                                  f"per tenant); retry when one has ended", self.retry_after)
        return member

    def give_back(self, owner: str, member: str) -> None:
        """Release a slot taken with `take`."""
        self.client.zrem(held_key(self.kind, owner), member)

    def held(self, owner: str) -> int:
        """How many of `owner`'s slots are held now."""
        return self.client.zcount(held_key(self.kind, owner), time.time(), "+inf")

    @contextmanager
    def slot(self, owner: str) -> Iterator[None]:
        """Hold one slot for the duration of the block."""
        member = self.take(owner)
        try:
            yield
        finally:
            self.give_back(owner, member)


def charge_daily_bytes(client: redis.Redis, owner: str, size: int, quota: int, day: str) -> int | None:
    """Count `size` bytes against `owner`'s `day` (YYYYMMDD, UTC); returns the day's total, or None (and
    counts nothing) when it would pass `quota`."""
    key = upload_bytes_key(owner, day)
    pipe = client.pipeline()
    pipe.incrby(key, size)
    pipe.expire(key, 2 * 86400)
    used = pipe.execute()[0]
    if used > quota:
        client.decrby(key, size)
        return None
    return used
