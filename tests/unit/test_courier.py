"""The courier's per-tenant capacity: shares of threads, turn order, bounded waiting lines, hand-backs."""
from __future__ import annotations

import threading
import time

import pytest

from workers.finishing.courier import Courier


class Broker:
    """Records the task messages the courier sends back (the part of a Celery app it uses)."""

    def __init__(self) -> None:
        self.sent: list[tuple[dict, float]] = []

    def send_task(self, name: str, kwargs: dict, queue: str, countdown: float) -> None:
        self.sent.append((kwargs, countdown))


class Receivers:
    """A `deliver` whose attempts block until released; records the order attempts started in."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gate = threading.Event()
        self._cond = threading.Condition()

    def __call__(self, job_id: str, attempt: int) -> None:
        with self._cond:
            self.started.append(job_id)
            self._cond.notify_all()
        assert self.gate.wait(30)

    def wait_started(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.started) >= n, 10), self.started


def _courier(receivers: Receivers, broker: Broker | None = None, **limits) -> Courier:
    return Courier(broker or Broker(), receivers, tenant_of=lambda job_id: job_id.split("-")[0], **limits)


def test_a_tenant_holds_at_most_its_share_of_threads():
    receivers = Receivers()
    courier = _courier(receivers, threads=3, tenant_threads=2)
    try:
        for n in range(5):
            courier.submit(f"a-{n}", 1)
        receivers.wait_started(2)
        courier.submit("b-0", 1)
        receivers.wait_started(3)
        assert receivers.started == ["a-0", "a-1", "b-0"]
    finally:
        receivers.gate.set()
        courier.shutdown()


def test_tenants_take_turns():
    """One thread: after a-0, the waiting tenants go in turn (FIFO would run a-2 before b-0 and c-0)."""
    receivers = Receivers()
    courier = _courier(receivers, threads=1, tenant_threads=1)
    try:
        courier.submit("a-0", 1)
        receivers.wait_started(1)
        for job_id in ("a-1", "a-2", "b-0", "c-0"):
            courier.submit(job_id, 1)
        receivers.gate.set()
        receivers.wait_started(5)
        assert receivers.started == ["a-0", "a-1", "b-0", "c-0", "a-2"]
    finally:
        courier.shutdown()


def test_a_full_waiting_line_hands_the_delivery_back_with_the_same_attempt():
    receivers, broker = Receivers(), Broker()
    courier = _courier(receivers, broker, threads=1, tenant_threads=1, tenant_backlog=2, backlog=3)
    try:
        courier.submit("a-0", 4)
        receivers.wait_started(1)
        for n in (1, 2, 3):
            courier.submit(f"a-{n}", 4)  # a-3: over tenant a's line of 2
        courier.submit("b-0", 1)  # b has room: the third waiting place
        courier.submit("c-0", 1)  # all lines together full
        assert [kwargs for kwargs, _ in broker.sent] == [{"job_id": "a-3", "attempt": 4},
                                                          {"job_id": "c-0", "attempt": 1}]
        assert all(countdown > 0 for _, countdown in broker.sent)
    finally:
        receivers.gate.set()
        courier.shutdown()


def test_shutdown_hands_waiting_deliveries_back():
    receivers, broker = Receivers(), Broker()
    courier = _courier(receivers, broker, threads=1, tenant_threads=1)
    courier.submit("a-0", 1)
    receivers.wait_started(1)
    courier.submit("a-1", 2)
    courier.shutdown()
    receivers.gate.set()
    assert broker.sent == [({"job_id": "a-1", "attempt": 2}, 0)]
    courier.submit("b-0", 1)  # after shutdown: handed back too
    assert broker.sent[-1][0] == {"job_id": "b-0", "attempt": 1}


def test_limits_are_checked():
    with pytest.raises(ValueError, match="tenant_threads"):
        _courier(Receivers(), threads=2, tenant_threads=3)


def test_a_failed_attempt_is_scheduled_again_after_backoff():
    broker = Broker()
    done = threading.Event()

    def deliver(job_id: str, attempt: int) -> None:
        from sdq.exceptions import WebhookFailed
        done.set()
        raise WebhookFailed("HTTP 503")

    courier = Courier(broker, deliver, tenant_of=lambda job_id: "a", threads=1, tenant_threads=1)
    try:
        courier.submit("a-0", 3)
        assert done.wait(10)
        deadline = time.monotonic() + 10
        while not broker.sent and time.monotonic() < deadline:
            time.sleep(0.01)
        assert broker.sent and broker.sent[0][0] == {"job_id": "a-0", "attempt": 4}
    finally:
        courier.shutdown()
