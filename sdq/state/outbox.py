"""The outbox: state first, message second, never one without the other.

Every state change that needs a task message (submit, retry, the reaper's re-queue, an out-of-memory
hand-off, a chunk passed on for later, a duplicate kept for a second look) records the message in the
sorted set `OUTBOX_KEY` in the same Redis step, scored by the time it is due. The writer then
publishes and removes it (`done`); whoever finds an entry due (every worker's heartbeat:
`sdq.celery_app.flush_outbox`) takes it for `lease` seconds (`take_due`), publishes it and removes it.
A process killed between the two steps, or a broker error, leaves the entry: it is published once
its lease is over. An entry may be published twice (a publisher killed between its publish and its
`done`); a start with a stale or running attempt drops the extra message (`lua/start.lua`).

A chunk entry that no live worker may take when it comes due is parked instead of published
(`park`, `sdq.celery_app.publish_member`): it waits in ``sdq:parked``, costing nothing, until the fleet
changes (a worker joins, leaves or restarts) or `PARKED_RECHECK` passes; the one flusher that sees that
first puts back those a live worker can take (`unpark`) and drops those of ended jobs.

Members are either an intent, ``<job>|<index>:<gen>,...`` (publish these items if they are still
`queued` in that attempt; built from their records at publish time, `intent`), or a chunk message as
JSON (published as it is) under an id of its own, so that the same chunk passed on again while an
earlier copy is being published is a second entry, not one the earlier publisher's `done` removes.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from sdq import defaults
from sdq.state.keys import OUTBOX_KEY, PARKED_FLEET_KEY, PARKED_KEY, job_key
from sdq.state.redisconn import text
from sdq.state.scripts import Script, register


TAKE_WINDOW = 10
"""How many times `limit` due entries one take looks at to share them fairly across tenants."""


def intent(job_id: str, pairs: list[tuple[int, int]]) -> str:
    """The outbox member "publish items (index, gen) of `job_id`" (as `lua/common.lua` spells it)."""
    if not pairs:
        raise ValueError(f"an intent of job {job_id} needs items, got {pairs!r}")
    return f"{job_id}|" + ",".join(f"{int(i)}:{int(g)}" for i, g in pairs)


def parse_intent(member: str) -> tuple[str, list[tuple[int, int]]]:
    """(job id, [(index, gen), ...]) of an intent member."""
    job_id, _, rest = member.partition("|")
    if not job_id or not rest:
        raise ValueError(f"not an outbox intent: {member!r}")
    return job_id, [(int(i), int(g)) for i, g in (p.split(":") for p in rest.split(","))]


def chunk_message(member: str) -> dict[str, Any]:
    """The chunk message of a chunk member (entries written before members had ids are the message)."""
    doc = json.loads(member)
    return doc["chunk"] if "entry" in doc else doc


def is_chunk(member: str) -> bool:
    """Whether an outbox member is a whole chunk message (JSON) rather than an intent."""
    return member.startswith("{")


class Outbox:
    """The outbox on one Redis connection. Pass the connection in."""

    def __init__(self, client: redis.Redis, lease: float = defaults.OUTBOX_LEASE,
                 scripts: dict[str, Script] | None = None) -> None:
        self.redis, self.lease = client, lease
        scripts = scripts or register(client)
        self._take, self._park, self._unpark = scripts["outbox_take"], scripts["park"], scripts["unpark"]

    def due(self, now: float | None = None) -> float:
        """The due time of an entry its writer publishes itself: one lease from now."""
        return (time.time() if now is None else now) + self.lease

    def add_chunk(self, message: dict[str, Any], due: float) -> str:
        """Publish chunk `message` at `due` (a chunk passed on for later); returns the member."""
        member = json.dumps({"entry": uuid.uuid4().hex, "chunk": message}, sort_keys=True)
        self.redis.zadd(OUTBOX_KEY, {member: due})
        return member

    def take_due(self, limit: int = 100) -> list[str]:
        """Entries due now, each taken for `lease` seconds (another taker skips it meanwhile); fair across
        tenants: of the oldest `TAKE_WINDOW` x `limit` due entries, one per tenant in turn (`lua/outbox_take.lua`)."""
        now = time.time()
        return [text(m) for m in self._take(keys=[OUTBOX_KEY, job_key("")],
                                            args=[now, now + self.lease, limit, limit * TAKE_WINDOW])]

    def done(self, *members: str) -> None:
        """These entries were published."""
        if members:
            self.redis.zrem(OUTBOX_KEY, *members)

    def park(self, member: str, fleet: str) -> bool:
        """Park a chunk entry no worker of `fleet` (`sdq.state.fleet.signature`) can take: it waits out
        of the outbox until `fleet_changed` (False, and it stays, if the fleet changed already)."""
        return self._park(keys=[OUTBOX_KEY, PARKED_KEY, PARKED_FLEET_KEY], args=[member, time.time(), fleet]) == 1

    def fleet_changed(self, fleet: str, recheck: float = defaults.PARKED_RECHECK) -> bool:
        """Record `fleet` as the one parked chunks are checked against; True for the one caller that saw it
        change (or `recheck` seconds pass): it then looks at them again (`parked`, `unpark`, `drop_parked`)."""
        if text(self.redis.get(PARKED_FLEET_KEY)) == fleet:
            return False  # unchanged: its expiry is not pushed back, so the recheck still comes
        return text(self.redis.set(PARKED_FLEET_KEY, fleet, ex=max(1, int(recheck)), get=True)) != fleet

    def parked(self, start: int = 0, count: int = 500) -> list[str]:
        """A page of the parked chunk entries, oldest first."""
        return [text(m) for m in self.redis.zrange(PARKED_KEY, start, start + count - 1)]

    def unpark(self, *members: str) -> int:
        """Parked entries back in the outbox, due now; returns how many this call moved."""
        return int(self._unpark(keys=[OUTBOX_KEY, PARKED_KEY], args=[time.time(), *members])) if members else 0

    def drop_parked(self, *members: str) -> None:
        """Parked entries nobody needs any more (their job ended, was cancelled or is gone)."""
        if members:
            self.redis.zrem(PARKED_KEY, *members)
