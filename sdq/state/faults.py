"""The fault-injection rules a test aims at running workers (`workers.testing.faults`): hash
`FAULT_RULES_KEY` (every worker) or ``<it>:<worker>`` maps a point to an action, and each hit writes
a marker key (`sdq.state.keys.fault_marker_key`) a test waits on."""
from __future__ import annotations

import redis

from sdq.state.keys import FAULT_RULES_KEY, fault_marker_key
from sdq.state.redisconn import text


class FaultRules:
    """The rules and markers on one connection. Pass the connection in."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def rule(self, worker: str, point: str) -> str | None:
        """The action set for `point` on `worker` (its own rules first, then every worker's)."""
        return text(self.client.hget(f"{FAULT_RULES_KEY}:{worker}", point) or self.client.hget(FAULT_RULES_KEY, point))

    def mark(self, worker: str, point: str, value: int) -> None:
        """Write the marker of `point` hit on `worker`."""
        self.client.set(fault_marker_key(worker, point), value)

    def marked(self, worker: str, point: str) -> bool:
        """Whether the marker is still there (a test deletes it to let a paused worker go on); True while
        Redis cannot be reached (a test restarting it: keep waiting)."""
        try:
            return bool(self.client.exists(fault_marker_key(worker, point)))
        except redis.ConnectionError:
            return True
