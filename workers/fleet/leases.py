"""Leases on the broker messages a worker holds: how a dead worker's items return to the queue.

kombu's Redis transport emulates acknowledgements. A delivered message stays in the hash
``unacked`` and its delivery tag in the sorted set ``unacked_index`` (`sdq.state.keys.UNACKED_INDEX_KEY`),
scored by delivery time; every idle consuming worker sweeps that set every few seconds and puts
back in its queue any message scored older than the visibility timeout (kombu's
``QoS.restore_visible``). sdq keeps that timeout short (`sdq.defaults.VISIBILITY_TIMEOUT`) and has
each live worker re-score the messages it holds from its heartbeat thread. A message held by a
live worker is therefore never restored, however long its chunk runs, while a dead worker's
message is restored one timeout after its last refresh.

Leases are renewed only while the work makes progress: a busy worker that has not reported
progress (`Leases.progress`: a denoising step, a model loading (`workers.loading.loadwatch`) or loaded, a
piece of a model pull, an upload attempt) for
`stall_timeout` seconds is hung (after a call's last denoising step, `Leases.finishing` gives its decode up to
`sdq.defaults.FINISH_MAX_S` more), and its held messages are left to expire and go to another
worker, although its heartbeat thread lives on.

Only ``ZADD XX`` is used: a tag that was acknowledged (or already restored) is never re-added.
Scores are wall-clock seconds, as kombu writes them, so hosts need synchronised clocks (NTP).
"""
from __future__ import annotations

import logging
import threading
import time

from celery import signals

from sdq import defaults
from sdq.state.leases import UnackedIndex

log = logging.getLogger(__name__)


class Leases:
    """Delivery tags of the messages this process holds, and their refresh."""

    def __init__(self, index: UnackedIndex, stall_timeout: float = defaults.STALL_TIMEOUT) -> None:
        self.index, self.stall_timeout = index, stall_timeout
        self._held: dict[str, str] = {}  # delivery tag -> task id
        self._lock = threading.Lock()
        self._busy = False
        self._last_progress = time.monotonic()
        self._finishing_until = 0.0

    def busy(self) -> None:
        """The worker started running a chunk."""
        self._busy, self._last_progress, self._finishing_until = True, time.monotonic(), 0.0

    def idle(self) -> None:
        """The worker is between chunks (waiting for work is not a stall)."""
        self._busy = False

    def progress(self) -> None:
        """The running chunk made progress."""
        self._last_progress = time.monotonic()
        self._finishing_until = 0.0

    def finishing(self, most: float = defaults.FINISH_MAX_S) -> None:
        """The running call made its last denoising step: what is left (its decode) is not a stall for `most` s."""
        self._finishing_until = time.monotonic() + most

    def stalled(self) -> bool:
        """Busy without progress for longer than `stall_timeout` (and not finishing a call)."""
        now = time.monotonic()
        return self._busy and now - self._last_progress > self.stall_timeout and now > self._finishing_until

    def connect(self) -> None:
        """Follow Celery's signals: a task message received is held until its task has run."""
        signals.task_received.connect(self._on_received, weak=False)
        signals.task_postrun.connect(self._on_done, weak=False)
        signals.task_revoked.connect(self._on_revoked, weak=False)

    def _on_received(self, sender=None, request=None, **_) -> None:
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag:
            with self._lock:
                self._held[str(tag)] = request.id

    def _on_done(self, sender=None, task_id: str | None = None, **_) -> None:
        with self._lock:
            for tag in [t for t, tid in self._held.items() if tid == task_id]:
                del self._held[tag]

    def _on_revoked(self, sender=None, request=None, **_) -> None:
        self._on_done(task_id=getattr(request, "id", None))

    def held(self) -> list[str]:
        """Delivery tags held now."""
        with self._lock:
            return list(self._held)

    def refresh(self) -> int:
        """Re-score every held message that is still unacknowledged; returns how many."""
        tags = self.held()
        if not tags:
            return 0
        if self.stalled():
            log.warning("no progress for %.0fs: not renewing the leases of %d held message(s)",
                        time.monotonic() - self._last_progress, len(tags))
            return 0
        gone = self.index.renew(tags)
        if gone:  # acknowledged or restored meanwhile: no longer ours
            with self._lock:
                for tag in gone:
                    self._held.pop(tag, None)
        return len(tags) - len(gone)
