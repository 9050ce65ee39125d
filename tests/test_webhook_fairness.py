"""One tenant's hanging webhook receivers (or DNS) neither delay beyond a bound nor drop another tenant's webhooks.

The stated bound: while fewer than WEBHOOK_THREADS / WEBHOOK_TENANT_THREADS tenants keep a worker's courier
busy, a tenant's webhook attempt starts as soon as its task reaches the worker and ends within
WEBHOOK_DEADLINE (DNS included); so a good receiver has it within WEBHOOK_DEADLINE of the hand-over.
"""
from __future__ import annotations

import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from sdq import contract, defaults
from sdq.celery_app import make_celery
from sdq.config import Settings
from sdq.exceptions import WebhookFailed
from sdq.records import Job
from sdq.state.store import JobStore
from tests.conftest import wait_until
from tests.support.trickle import HANG, TrickleReceiver

REAL_GETADDRINFO = socket.getaddrinfo


class _Good(BaseHTTPRequestHandler):
    arrived: dict[str, float] = {}

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).arrived[self.path] = time.monotonic()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def good():
    _Good.arrived = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Good)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _job(jobs: JobStore, url: str, owner: str) -> str:
    job_id = uuid.uuid4().hex
    jobs.create(Job(id=job_id, owner=owner, state="succeeded", created_at=time.time(), model="m",
                    pipeline="txt2img", seed=1, webhook_url=url), [])
    return job_id


@pytest.fixture(scope="module")
def fair(stack_factory):
    """A private stack with one worker that may call loopback webhooks (no model: it only delivers)."""
    st = stack_factory("webhook-fairness", env={"SDQ_WEBHOOK_ALLOW_PRIVATE": "1"})
    st.worker("w-fair", "--device", "cpu", "--threads", "1")
    return st


@pytest.mark.serial
def test_hanging_receivers_of_one_tenant_do_not_delay_another_tenants_webhook(fair, good):
    """Tenant A has 40 finished jobs whose receivers accept and never answer; tenant B has one with a good
    receiver. B's webhook arrives within WEBHOOK_DEADLINE of reaching the worker (before: behind A's 40
    attempts on 4 shared threads, about 150 s), and A never holds more than its share of the courier."""
    jobs = JobStore(redis.Redis.from_url(fair.env["SDQ_REDIS_URL"]))
    celery = make_celery(fair.env["SDQ_REDIS_URL"])
    hanging = TrickleReceiver(HANG)
    try:
        for _ in range(40):
            celery.send_task(contract.TASK_WEBHOOK, kwargs={"job_id": _job(jobs, hanging.url, "tenant-a")},
                             queue=contract.CONTROL_QUEUE)
        wait_until(lambda: hanging.open >= 1, "the worker's courier took tenant A's webhooks", timeout=120)
        b_job = _job(jobs, f"http://127.0.0.1:{good}/b", "tenant-b")
        sent = time.monotonic()
        celery.send_task(contract.TASK_WEBHOOK, kwargs={"job_id": b_job}, queue=contract.CONTROL_QUEUE)
        wait_until(lambda: "/b" in _Good.arrived, "tenant B's webhook arrived", timeout=240)
        took = _Good.arrived["/b"] - sent
        assert took < defaults.WEBHOOK_DEADLINE, f"tenant B's webhook waited {took:.0f} s behind tenant A's"
        assert wait_until(lambda: jobs.get(b_job).webhook_delivered_at, "B recorded delivered", timeout=30)
        assert hanging.most_open <= getattr(defaults, "WEBHOOK_TENANT_THREADS", 0), hanging.most_open
    finally:
        hanging.close()
        celery.close()


@pytest.fixture
def slow_dns(monkeypatch):
    """getaddrinfo for any *.slow.example name blocks until the test ends (a resolver that never answers)."""
    release = threading.Event()

    def fake(host, port, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".slow.example"):
            release.wait(120)
            raise socket.gaierror(socket.EAI_AGAIN, "timed out")
        return REAL_GETADDRINFO(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield
    release.set()


@pytest.fixture(scope="module")
def dns_redis(stack_factory) -> str:
    """A private Redis (and producer) for the in-process courier tests."""
    return stack_factory("webhook-fairness-dns").env["SDQ_REDIS_URL"]


@pytest.fixture(scope="module")
def redis_jobs(dns_redis) -> JobStore:
    return JobStore(redis.Redis.from_url(dns_redis))


def test_dns_resolution_is_inside_the_delivery_deadline(redis_jobs, slow_dns):
    """A host whose name never resolves fails the attempt at the deadline (before: the deadline began
    only after resolution, so the attempt waited as long as the resolver did)."""
    from workers.finishing.webhook_delivery import deliver_webhook

    job_id = _job(redis_jobs, "http://hooks.slow.example/hook", "tenant-a")
    outcome: list[object] = []

    def attempt():
        try:
            deliver_webhook(redis_jobs, Settings(webhook_allow_private=True), job_id, 1, deadline=2.0)
            outcome.append("delivered")
        except WebhookFailed as exc:
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(30)
    took = time.monotonic() - started
    assert outcome and isinstance(outcome[0], WebhookFailed), f"still resolving after {took:.0f} s"
    assert took < 2.0 + 3


def test_slow_dns_of_one_tenant_leaves_the_courier_to_others(dns_redis, redis_jobs, slow_dns, good):
    """In a courier of 4 threads, tenant A's 20 webhooks to names that never resolve hold at most its own
    slots; tenant B's webhook, handed over after them, is delivered at once."""
    from workers.finishing.courier import Courier
    from workers.finishing.webhook_delivery import deliver_webhook

    settings = Settings(webhook_allow_private=True)
    celery = make_celery(dns_redis)
    started: list[str] = []

    def deliver(job_id: str, attempt: int) -> None:
        started.append(job_id)
        deliver_webhook(redis_jobs, settings, job_id, attempt, deadline=60.0)

    courier = Courier(celery, deliver, lambda job_id: redis_jobs.get(job_id).owner, threads=4, tenant_threads=2,
                      max_retries=0)
    try:
        for n in range(20):
            courier.submit(_job(redis_jobs, f"http://h{n}.slow.example/hook", "tenant-a"), 1)
        wait_until(lambda: len(started) >= 2, "the courier started tenant A's attempts", timeout=30)
        b_job = _job(redis_jobs, f"http://127.0.0.1:{good}/b", "tenant-b")
        sent = time.monotonic()
        courier.submit(b_job, 1)
        wait_until(lambda: "/b" in _Good.arrived, "tenant B's webhook arrived", timeout=90)
        assert _Good.arrived["/b"] - sent < 5
        assert len(started) == 3  # A's two slots and B's; A's other 18 wait their turn
    finally:
        courier.shutdown()
        celery.close()
