"""Webhook targets: private and NAT64/6to4-embedded addresses, pinned delivery, DNS failures, logging.

Delivery runs `deliver_webhook` in-process against a job in a real Redis and a loopback HTTP server.
Name resolution is scripted (socket.getaddrinfo) to play a DNS-rebinding attacker, and connections
to anything but loopback are refused before a packet leaves the machine.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
import urllib3.util.connection

from sdq.config import Settings
from sdq.exceptions import InvalidInput, WebhookFailed
from sdq.records import Job
from sdq.state.store import JobStore
from sdq.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, check_webhook_url, verify

MASTER = "master-secret-for-webhooks"
REAL_GETADDRINFO = socket.getaddrinfo
REAL_CONNECT = urllib3.util.connection.create_connection


@pytest.mark.parametrize("url", [
    "http://[64:ff9b::7f00:1]/",        # NAT64 of 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/",     # NAT64 of 169.254.169.254 (cloud metadata)
    "http://[64:ff9b::c0a8:101]:8080/",  # NAT64 of 192.168.1.1
    "http://[2002:a00:1::]/",           # 6to4 of 10.0.0.1
    "http://[::ffff:127.0.0.1]/",
])
@pytest.mark.unit
def test_ipv6_addresses_embedding_private_ipv4_are_refused(url):
    with pytest.raises(InvalidInput) as err:
        check_webhook_url(url, allow_private=False)
    assert err.value.field == "webhook_url" and err.value.code == "forbidden_target"


@pytest.mark.unit
def test_nat64_of_a_public_address_is_allowed():
    assert check_webhook_url("http://[64:ff9b::808:808]/", allow_private=False)


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes]] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def jobs(stack_factory) -> JobStore:
    return JobStore(redis.Redis.from_url(stack_factory("webhooks").env["SDQ_REDIS_URL"]))


@pytest.fixture
def hook():
    _Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _job(jobs: JobStore, url: str, owner: str = "alice") -> str:
    job_id = uuid.uuid4().hex
    jobs.create(Job(id=job_id, owner=owner, state="succeeded", created_at=time.time(), model="m",
                    pipeline="txt2img", seed=1, webhook_url=url), [])
    return job_id


def _dns(monkeypatch, answers: list):
    """getaddrinfo for hooks.example answers from `answers` in turn (an exception is raised)."""
    calls = []

    def fake(host, port, *args, **kwargs):
        if host != "hooks.example":
            return REAL_GETADDRINFO(host, port, *args, **kwargs)
        answer = answers[min(len(calls), len(answers) - 1)]
        calls.append(answer)
        if isinstance(answer, Exception):
            raise answer
        family = socket.AF_INET6 if ":" in answer else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (answer, port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return calls


def _loopback_only(monkeypatch):
    """Connections to a non-loopback IP are refused here (recorded), so no packet leaves the machine."""
    attempts = []

    def connect(address, *args, **kwargs):
        attempts.append(address[0])
        try:
            if not ipaddress.ip_address(address[0]).is_loopback:
                raise ConnectionRefusedError(f"test refuses {address[0]}")
        except ValueError:  # a host name: resolved inside, like urllib3 does
            pass
        return REAL_CONNECT(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", connect)
    return attempts


def test_delivery_connects_to_the_checked_address_not_a_rebound_one(jobs, hook, monkeypatch):
    """DNS says public at check time, loopback a moment later: nothing may reach the loopback server."""
    from workers.finishing.webhook_delivery import deliver_webhook

    _dns(monkeypatch, ["93.184.215.14", "127.0.0.1"])
    attempts = _loopback_only(monkeypatch)
    job_id = _job(jobs, f"http://hooks.example:{hook}/hook")
    settings = Settings(webhook_secret=MASTER)
    with pytest.raises(WebhookFailed):
        deliver_webhook(jobs, settings, job_id)  # the public address refuses: retried later
    assert _Hook.received == [] and attempts == ["93.184.215.14"]


def test_delivery_sends_host_and_tenant_signature_to_the_pinned_address(jobs, hook, monkeypatch):
    from sdq.webhooks import tenant_secret
    from workers.finishing.webhook_delivery import deliver_webhook

    calls = _dns(monkeypatch, ["127.0.0.1", socket.gaierror(socket.EAI_NONAME, "gone")])
    job_id = _job(jobs, f"http://hooks.example:{hook}/hook?k=v")
    deliver_webhook(jobs, Settings(webhook_secret=MASTER, webhook_allow_private=True), job_id)
    assert len(calls) == 1 and len(_Hook.received) == 1
    headers, body = _Hook.received[0]
    assert headers["Host"] == f"hooks.example:{hook}"
    assert verify(tenant_secret(MASTER, "alice"), headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert not verify(tenant_secret(MASTER, "bob"), headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert not verify(MASTER, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert jobs.get(job_id).webhook_delivered_at


def test_dns_failure_at_delivery_is_retried_not_dropped(jobs, monkeypatch):
    from workers.finishing.webhook_delivery import deliver_webhook

    _dns(monkeypatch, [socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution")])
    job_id = _job(jobs, "http://hooks.example/hook")
    with pytest.raises(WebhookFailed):
        deliver_webhook(jobs, Settings(webhook_secret=MASTER), job_id)


def test_webhook_urls_are_not_logged(jobs, caplog, monkeypatch):
    from workers.finishing.webhook_delivery import deliver_webhook

    secret_url = "http://10.1.2.3/hook?token=s3cr3t-in-url"
    job_id = _job(jobs, secret_url)
    with caplog.at_level(logging.DEBUG):
        deliver_webhook(jobs, Settings(webhook_secret=MASTER), job_id)  # refused: private target
        _dns(monkeypatch, [socket.gaierror(socket.EAI_AGAIN, "again")])
        with pytest.raises(WebhookFailed):
            deliver_webhook(jobs, Settings(), _job(jobs, "http://hooks.example/x?token=s3cr3t-in-url"))
    assert caplog.records and "s3cr3t" not in caplog.text and job_id in caplog.text


# -- receivers that trickle: a delivery has a hard wall-clock deadline --------------------------

@pytest.mark.serial
@pytest.mark.parametrize("prefix", ["body", "headers"])
def test_trickling_receiver_cannot_hold_a_delivery(jobs, prefix):
    """A receiver announcing 100 MB and sending a byte every 2 s (or never ending its headers) holds
    an attempt at most the deadline: the status is used without reading the body, and a watchdog
    ends an answer that does not come in time."""
    from sdq import defaults
    from tests.support.trickle import BODY, HEADERS, TrickleReceiver
    from workers.finishing.webhook_delivery import deliver_webhook

    deadline = getattr(defaults, "WEBHOOK_DEADLINE", 15.0)  # (the old code had none: run there, this hangs)
    receiver = TrickleReceiver(BODY if prefix == "body" else HEADERS, interval=2.0)
    job_id = _job(jobs, receiver.url)
    outcome: list[object] = []

    def attempt():
        try:
            deliver_webhook(jobs, Settings(webhook_allow_private=True), job_id)
            outcome.append("delivered")
        except WebhookFailed as exc:
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(deadline + 20)
    took = time.monotonic() - started
    receiver.close()
    assert outcome, f"the delivery was still reading a trickling answer after {took:.0f} s"
    assert took < deadline + 10
    if prefix == "body":  # the status line and headers came: delivered, the body never read
        assert outcome == ["delivered"] and jobs.get(job_id).webhook_delivered_at and took < 5
    else:  # no complete answer within the deadline: retried later
        assert isinstance(outcome[0], WebhookFailed) and "deadline" in str(outcome[0])
        assert took >= deadline - 1


@pytest.fixture(scope="module")
def hooked(stack_factory):
    """A private stack with one worker that may call loopback webhooks."""
    st = stack_factory("webhooks-worker", env={"SDQ_WEBHOOK_ALLOW_PRIVATE": "1"})
    st.worker("w-hooked", "--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd")
    return st


def test_trickling_receivers_do_not_stall_the_worker(hooked):
    """Jobs whose webhooks go to receivers that trickle (a 100 MB body, or headers that never end)
    leave the worker's image slot free: the next job finishes, and the webhooks that answered a
    status are recorded delivered."""
    from cli.client import Client
    from tests.conftest import FAST, wait_job
    from tests.support.trickle import BODY, HEADERS, TrickleReceiver

    client = Client(hooked.env["SDQ_SERVER"])
    receivers = [TrickleReceiver(BODY), TrickleReceiver(BODY), TrickleReceiver(HEADERS), TrickleReceiver(HEADERS)]
    try:
        hooked_ids = [client.submit({"prompts": [f"hooked {n}"], "params": FAST, "webhook_url": r.url})["id"]
                      for n, r in enumerate(receivers)]
        for job_id in hooked_ids:
            assert wait_job(client, job_id, timeout=120)["state"] == "succeeded"
        wait_until_requests = time.monotonic() + 60
        while sum(r.requests > 0 for r in receivers) < 4 and time.monotonic() < wait_until_requests:
            time.sleep(0.2)
        assert all(r.requests for r in receivers), "every receiver was called"
        after = client.submit({"prompts": ["after the hostile receivers"], "params": FAST})["id"]
        assert wait_job(client, after, timeout=90)["state"] == "succeeded"  # old code: `queued` for ever
        store = JobStore(redis.Redis.from_url(hooked.env["SDQ_REDIS_URL"]))
        assert all(store.get(job_id).webhook_delivered_at for job_id in hooked_ids[:2])
    finally:
        for r in receivers:
            r.close()
