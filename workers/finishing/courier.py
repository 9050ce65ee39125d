"""The courier: a worker's webhook deliveries run on a few background threads, never on its image slot,
shared fairly between tenants.

Why threads and not a second queue and pool: a worker is one solo-pool process per device (CUDA and
fork do not mix), so a separate Celery pool would mean a second process per worker to deploy and
watch. Deliveries only wait on sockets and the resolver. The `sdq.webhook` task only hands a job id
over and returns at once.

Capacity is per tenant (the job's owner): each tenant has its own waiting line (at most
`WEBHOOK_TENANT_BACKLOG`, all lines together at most `WEBHOOK_BACKLOG`) and holds at most
`WEBHOOK_TENANT_THREADS` of the `WEBHOOK_THREADS` threads at once; a free thread takes the next
tenant in turn (round robin) that is under its share. Each attempt is decided within the hard
`WEBHOOK_DEADLINE` (DNS included). So while fewer than threads / tenant threads tenants keep a
worker busy, another tenant's attempt starts as soon as it is handed over; in general it starts
within ceil(busy tenants / threads) deadlines (a thread held by a resolver counts as busy). A thread
whose resolver has not answered by the deadline stays with that tenant (still counted in its share)
until the system resolver gives up, so a worker has at most `threads` such helper threads.

A failed attempt is sent again as a new task message after Celery's exponential backoff (1, 2, 4,
... s, full jitter, at most `WEBHOOK_BACKOFF_MAX`), up to `WEBHOOK_MAX_RETRIES` times. A delivery
the courier has no room for (its tenant's line or all lines full, or the worker stopping) is sent
again after about `WEBHOOK_REFUSED_DELAY` seconds with the same attempt number: refusals never use
up another tenant's attempts. Deliveries held when the worker process dies (in flight or waiting,
at most threads + `WEBHOOK_BACKLOG`) are lost: their messages were acknowledged at hand-over.
"""
from __future__ import annotations

import logging
import random
import threading
from collections import deque
from typing import Callable

from celery.utils.time import get_exponential_backoff_interval

from sdq import contract, defaults
from sdq.exceptions import WebhookFailed
from workers.finishing.webhook_delivery import ResolveTimeout

log = logging.getLogger(__name__)

Delivery = tuple[str, int]
"""(job id, attempt number)."""


class Courier:
    """Runs `deliver(job_id, attempt)` on background threads, fairly across tenants (`tenant_of(job_id)`);
    schedules the next attempt when it raises `WebhookFailed`."""

    def __init__(self, celery, deliver: Callable[[str, int], None], tenant_of: Callable[[str], str],
                 threads: int = defaults.WEBHOOK_THREADS, tenant_threads: int = defaults.WEBHOOK_TENANT_THREADS,
                 backlog: int = defaults.WEBHOOK_BACKLOG, tenant_backlog: int = defaults.WEBHOOK_TENANT_BACKLOG,
                 max_retries: int = defaults.WEBHOOK_MAX_RETRIES, backoff_max: int = defaults.WEBHOOK_BACKOFF_MAX,
                 refused_delay: float = defaults.WEBHOOK_REFUSED_DELAY) -> None:
        if not 1 <= tenant_threads <= threads or backlog < 0 or tenant_backlog < 0:
            raise ValueError(f"courier needs 1 <= tenant_threads <= threads and backlogs >= 0, got {tenant_threads}, "
                             f"{threads}, {backlog} and {tenant_backlog}")
        self.celery, self.deliver, self.tenant_of = celery, deliver, tenant_of
        self.tenant_threads, self.backlog, self.tenant_backlog = tenant_threads, backlog, tenant_backlog
        self.max_retries, self.backoff_max, self.refused_delay = max_retries, backoff_max, refused_delay
        self._cond = threading.Condition()
        self._waiting: dict[str, deque[Delivery]] = {}
        self._turn: deque[str] = deque()  # tenants with deliveries waiting, in turn order
        self._running: dict[str, int] = {}
        self._queued = 0
        self._stopping = False
        for n in range(threads):
            threading.Thread(target=self._loop, name=f"sdq-webhook-{n}", daemon=True).start()

    def submit(self, job_id: str, attempt: int) -> None:
        """Hand one attempt over (returns at once); without room it is offered again later, not lost."""
        try:
            tenant = self.tenant_of(job_id)
        except Exception as exc:  # noqa: BLE001 - Redis down: Celery retries the task
            raise WebhookFailed(f"owner of job {job_id} unknown ({type(exc).__name__})") from None
        with self._cond:
            line = self._waiting.get(tenant, ())
            if not self._stopping and self._queued < self.backlog and len(line) < self.tenant_backlog:
                if not line:
                    self._waiting[tenant] = deque()
                    self._turn.append(tenant)
                self._waiting[tenant].append((job_id, attempt))
                self._queued += 1
                self._cond.notify()
                return
        self._offer_later(job_id, attempt, self.refused_delay * random.uniform(0.5, 1.5))

    def _take(self) -> tuple[str, Delivery] | None:
        """The next tenant in turn under its share of threads, and its oldest delivery (under the lock)."""
        for _ in range(len(self._turn)):
            tenant = self._turn[0]
            self._turn.rotate(-1)  # this tenant's next turn comes after every other waiting tenant's
            if self._running.get(tenant, 0) >= self.tenant_threads:
                continue
            line = self._waiting[tenant]
            delivery = line.popleft()
            self._queued -= 1
            if not line:
                del self._waiting[tenant]
                self._turn.pop()
            self._running[tenant] = self._running.get(tenant, 0) + 1
            return tenant, delivery
        return None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while (taken := self._take()) is None:
                    if self._stopping:
                        return
                    self._cond.wait()
            tenant, (job_id, attempt) = taken
            try:
                self._run(job_id, attempt)
            finally:
                with self._cond:
                    self._running[tenant] -= 1
                    if not self._running[tenant]:
                        del self._running[tenant]
                    self._cond.notify_all()  # that tenant may be under its share again

    def _run(self, job_id: str, attempt: int) -> None:
        try:
            self.deliver(job_id, attempt)
        except ResolveTimeout as exc:
            self._again(job_id, attempt)
            exc.pending.join()  # the thread stays this tenant's until its resolver gives up
        except WebhookFailed:
            self._again(job_id, attempt)
        except Exception:  # noqa: BLE001 - a bug or Redis down: logged, the thread lives on
            log.exception("webhook for job %s: attempt %d crashed", job_id, attempt)
            self._again(job_id, attempt)

    def _again(self, job_id: str, attempt: int) -> None:
        if attempt > self.max_retries:
            log.warning("webhook for job %s given up after %d attempts", job_id, attempt)
            return
        delay = get_exponential_backoff_interval(1, attempt - 1, self.backoff_max, full_jitter=True)
        self._send(job_id, attempt + 1, delay)

    def _offer_later(self, job_id: str, attempt: int, delay: float) -> None:
        """Send this attempt back to the control queue (no room here); raises `WebhookFailed` if that fails."""
        if not self._send(job_id, attempt, delay):
            raise WebhookFailed("webhook courier is full and the broker refused the hand-back")

    def _send(self, job_id: str, attempt: int, delay: float) -> bool:
        try:
            self.celery.send_task(contract.TASK_WEBHOOK, kwargs={"job_id": job_id, "attempt": attempt},
                                  queue=contract.CONTROL_QUEUE, countdown=delay)
            return True
        except Exception:  # noqa: BLE001 - broker down: this delivery is lost, say so
            log.exception("webhook for job %s: could not schedule attempt %d", job_id, attempt)
            return False

    def shutdown(self) -> None:
        """Stop taking deliveries and hand the waiting ones back to the queue; attempts in flight end by their
        deadline."""
        with self._cond:
            self._stopping = True
            waiting = [d for line in self._waiting.values() for d in line]
            self._waiting.clear()
            self._turn.clear()
            self._queued = 0
            self._cond.notify_all()
        for job_id, attempt in waiting:
            self._send(job_id, attempt, 0)
