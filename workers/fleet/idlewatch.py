"""The idle worker's lookout for stragglers: a thread that runs `workers.running.backups.Backups.tick`
whenever a worker publishes its record (what it starts or finishes, or its heartbeat:
`sdq.state.fleet.events`; this worker's own record, published as it goes idle, is one), and every
`watch.IDLE_POLL_S` while a job with nothing queued has items running elsewhere that this worker
could back up (`sdq.scheduling.watch.next_check`).

Without it backups were decided on the heartbeat (every 10 s): at GPU speed a job is over before
that. Its Redis cost is counted (`looks`, `events`) and measured in docs/DESIGN.md."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from sdq import defaults
from sdq.scheduling import watch
from sdq.state import fleet
from sdq.state.store import JobStore
from workers.running.backups import Backups

log = logging.getLogger(__name__)

STOP_CHECK_S = 1.0
"""Longest the lookout blocks on the event channel before it sees whether it was stopped (a busy or
quiet worker's lookout wakes about once a second, not on a short poll)."""

BACKUP_SETTLE_S = 2.0
"""Seconds an idle worker that sent itself a backup waits for it to begin before it looks again."""


class IdleWatch(threading.Thread):
    """Looks for stragglers while this worker is idle (`is_idle`), promptly."""

    def __init__(self, jobs: JobStore, backups: Backups, is_idle: Callable[[], bool],
                 poll_s: float = watch.IDLE_POLL_S, quiet_s: float = defaults.HEARTBEAT_INTERVAL) -> None:
        super().__init__(name="sdq-idlewatch", daemon=True)
        self.jobs, self.backups, self.is_idle = jobs, backups, is_idle
        self.poll_s, self.quiet_s = poll_s, quiet_s  # quiet_s: longest wait without an event
        self.stopped = threading.Event()
        self.sent_at: float | None = None  # a backup sent to this worker's queue, not begun yet
        self.looks = 0  # looks at the fleet (each a few Redis reads)
        self.events = 0  # fleet events received
        self.wakeups = 0  # waits on the event channel (each a blocking read of at most STOP_CHECK_S)

    def look(self) -> None:
        """One look for a straggler, if idle (never raises: a backup is an optimisation)."""
        if not self.is_idle():
            self.backups.watched, self.backups.young_until, self.sent_at = 0, None, None
            return
        if self.sent_at is not None and time.monotonic() - self.sent_at < BACKUP_SETTLE_S:
            return  # the backup it sent is on its way to this worker
        self.looks += 1
        try:
            self.sent_at = time.monotonic() if self.backups.tick() else None
        except Exception:  # noqa: BLE001 - a Redis hiccup or a bad record must not stop the watch
            log.warning("straggler check failed", exc_info=True)

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._serve()
            except Exception:  # noqa: BLE001 - Redis down or a bad message: subscribe again, never die
                log.warning("fleet events lost; subscribing again", exc_info=True)
                self.stopped.wait(1.0)

    def _serve(self) -> None:
        pubsub = self.jobs.fleet_events()
        try:
            last = 0.0
            while not self.stopped.is_set():
                delay = watch.next_check(self.backups.watched, self.backups.young_until, time.time(), self.poll_s)
                # wait for an event (this worker's own record says when it goes idle) or the poll delay
                got = self._wait(pubsub, self.quiet_s if delay is None else delay)
                if got and time.monotonic() - last < watch.EVENT_MIN_GAP_S:
                    self.stopped.wait(watch.EVENT_MIN_GAP_S - (time.monotonic() - last))
                last = time.monotonic()
                self.look()
        finally:
            pubsub.close()

    def _wait(self, pubsub: fleet.Events, seconds: float) -> bool:
        """Block on the event channel for up to `seconds` (waking at most every `STOP_CHECK_S` to see
        whether it was stopped); True when an event came (a burst counts once)."""
        deadline = time.monotonic() + seconds
        while not self.stopped.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.wakeups += 1
            if pubsub.get_message(timeout=min(left, STOP_CHECK_S)) is not None:
                self.events += 1
                while pubsub.get_message(timeout=0) is not None:
                    self.events += 1
                return True
        return False

    def stop(self) -> None:
        """Stop watching."""
        self.stopped.set()
