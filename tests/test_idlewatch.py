"""The idle worker's lookout (workers/fleet/idlewatch.py) on a real Redis: it looks when a worker publishes its
record, polls every `IDLE_POLL_S` only while its last look watched items (else it blocks on the channel), and
never while busy."""
from __future__ import annotations

import time

import pytest
import redis

from sdq.records import WorkerRecord
from sdq.scheduling import watch
from sdq.state import fleet
from sdq.state.keys import FLEET_EVENTS_CHANNEL
from sdq.state.store import JobStore
from tests.conftest import wait_until
from workers.fleet.idlewatch import STOP_CHECK_S, IdleWatch


pytestmark = pytest.mark.serial  # poll intervals measured


class Looks:
    """Stands in for `workers.running.backups.Backups`: counts looks; `watched` is what the next look reports."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.watched, self.young_until, self.next_watched = 0, None, 0

    def tick(self) -> bool:
        self.times.append(time.monotonic())
        self.watched = self.next_watched
        return False


def test_an_idle_worker_looks_on_fleet_events_and_polls_only_while_it_watches(stack_factory):
    st = stack_factory("idlewatch")
    r = redis.Redis.from_url(st.env["SDQ_REDIS_URL"])
    looks, idle = Looks(), [True]
    lookout = IdleWatch(JobStore(r), looks, lambda: idle[0], quiet_s=60.0)  # no event, no watched item: a minute's wait
    lookout.start()
    try:
        wait_until(lambda: r.pubsub_numsub(FLEET_EVENTS_CHANNEL)[0][1] == 1, "the lookout subscribed", 30)
        # 1. A worker publishes what it starts: an idle worker looks at once.
        sent = time.monotonic()
        fleet.publish(r, WorkerRecord(name="busy"))
        wait_until(lambda: looks.times, "a look after the event", 10)
        assert looks.times[0] - sent < 1.0
        # 2. That look watched items: it looks again every IDLE_POLL_S, with no event.
        looks.next_watched = 1
        fleet.publish(r, WorkerRecord(name="busy"))
        wait_until(lambda: len(looks.times) >= 6, "polls while items are watched", 30)
        gaps = [b - a for a, b in zip(looks.times[2:], looks.times[3:])]
        assert min(gaps) >= watch.IDLE_POLL_S * 0.9 and sorted(gaps)[len(gaps) // 2] < 4 * watch.IDLE_POLL_S, gaps
        # 3. Nothing watched any more: it waits for the next event.
        looks.next_watched = 0
        n = len(looks.times)
        wait_until(lambda: len(looks.times) > n, "the last poll", 10)
        n, woke = len(looks.times), lookout.wakeups
        time.sleep(2.0)
        assert len(looks.times) == n
        # ...blocking on the channel, not polling it (a short poll costs an idle or busy worker CPU)
        assert lookout.wakeups - woke <= 2 / STOP_CHECK_S + 1, lookout.wakeups - woke
        # 4. A busy worker does not look.
        idle[0] = False
        fleet.publish(r, WorkerRecord(name="busy"))
        time.sleep(0.5)
        assert len(looks.times) == n and lookout.events == 3  # every publication was seen
    finally:
        lookout.stop()
        lookout.join(5)
    assert not lookout.is_alive()
