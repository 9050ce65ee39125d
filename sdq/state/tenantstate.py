"""What the producer keeps per tenant besides its jobs: a door's options (the A1111 door's
``POST /sdapi/v1/options``), and the slots of things a tenant holds open (`sdq.state.limits.TenantSlots`)."""
from __future__ import annotations

import json
from typing import Any

from sdq.state.base import StoreBase
from sdq.state.keys import door_options_key
from sdq.state.limits import TenantSlots
from sdq.state.redisconn import text


class TenantState(StoreBase):
    """A tenant's door options and its slots."""

    def door_options(self, owner: str) -> dict[str, Any]:
        """The options `owner` set at the A1111 door (name -> value)."""
        return {text(k): json.loads(v) for k, v in self.redis.hgetall(door_options_key(owner)).items()}

    def set_door_options(self, owner: str, values: dict[str, Any]) -> None:
        """Set some of `owner`'s A1111 door options (each stored as JSON)."""
        if values:
            self.redis.hset(door_options_key(owner), mapping={k: json.dumps(v) for k, v in values.items()})

    def slots(self, kind: str, limit: int, hold_s: float, retry_after: int, field: str) -> TenantSlots:
        """At most `limit` concurrent uses of `kind` per tenant, each held at most `hold_s` seconds."""
        return TenantSlots(self.redis, kind, limit, hold_s, retry_after, field)
