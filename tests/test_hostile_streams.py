"""Event streams must not exhaust the producer: hundreds open at once, the API still answers,
every stream ends after its maximum lifetime with a reconnect hint."""
from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest
import redis
import requests

from tests.conftest import wait_until

STREAMS = 300
LIFETIME = 15


@pytest.fixture(scope="module")
def api(stack_factory) -> str:
    """A producer + Redis with no worker (a job waits forever) and streams that live LIFETIME seconds."""
    return stack_factory("streams", env={"SDQ_STREAM_MAX_SECONDS": str(LIFETIME),
                                         "SDQ_MAX_STREAMS": str(STREAMS + 100)}).env["SDQ_SERVER"]


def _open_stream(host: str, port: int, job_id: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def _read_until(sock: socket.socket, marker: bytes, buf: bytes = b"", timeout: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout
    while marker not in buf:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
    return buf


@pytest.mark.slow
@pytest.mark.serial
def test_hundreds_of_open_streams_leave_the_api_answering(api):
    job_id = requests.post(api + "/v1/jobs", json={"prompts": ["waits"], "requires": {"device": "gpu"},
                                                   "params": {"width": 64, "height": 64, "steps": 2}},
                           timeout=10).json()["id"]
    parts = urlsplit(api)
    socks, heads = [], []
    try:
        for _ in range(STREAMS):
            socks.append(_open_stream(parts.hostname, parts.port, job_id))
        deadline = time.monotonic() + 60
        for sock in socks:  # every stream is served: status line, retry hint and snapshot arrived
            heads.append(_read_until(sock, b"event: job.state", timeout=deadline - time.monotonic()))
        opened = time.monotonic()
        bad = [h[:300] for h in heads if not (h.startswith(b"HTTP/1.1 200") and b"retry: " in h)]
        assert not bad, (len(bad), bad[:2])
        for path in ("/healthz", f"/v1/jobs/{job_id}", "/v1/jobs", "/v1/workers", "/metrics"):
            started = time.monotonic()
            assert requests.get(api + path, timeout=5).ok, path
            assert time.monotonic() - started < 2.0, path
        resp = requests.post(api + "/v1/jobs", json={"prompts": ["more"], "params": {"width": 64, "height": 64}},
                             timeout=5)
        assert resp.status_code == 202
        assert time.monotonic() - opened < LIFETIME  # all of that ran while every stream was open
        # each stream ends at its maximum lifetime, with an event saying so
        deadline = time.monotonic() + LIFETIME + 30
        tails = [_read_until(s, b"event: stream.timeout", timeout=deadline - time.monotonic()) for s in socks]
        assert all(b"event: stream.timeout" in t for t in tails)
    finally:
        for sock in socks:
            sock.close()


# -- per tenant: a stream limit, and a snapshot that costs a status read ---------------------------

TOKENS = {"alice": "tok-streams-alice", "bob": "tok-streams-bob"}
STREAM_CAP = 3


@pytest.fixture(scope="module")
def tenants(stack_factory):
    """Two tenants, at most STREAM_CAP streams each, no worker (jobs wait)."""
    tokens = ",".join(f"{owner}:{tok}" for owner, tok in TOKENS.items())
    return stack_factory("streams-tenants", env={"SDQ_API_TOKENS": tokens, "SDQ_MAX_STREAMS": str(STREAM_CAP)})


def _open_as(api: str, owner: str, job_id: str) -> socket.socket:
    parts = urlsplit(api)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {parts.hostname}\r\n"
                 f"Authorization: Bearer {TOKENS[owner]}\r\n\r\n".encode())
    return sock


def _submit_as(api: str, owner: str, prompt: str) -> str:
    resp = requests.post(api + "/v1/jobs", headers={"Authorization": f"Bearer {TOKENS[owner]}"}, timeout=10,
                         json={"prompts": [prompt], "requires": {"device": "gpu"},
                               "params": {"width": 64, "height": 64, "steps": 2}})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def test_stream_snapshot_does_not_scan_the_queue(tenants):
    """Opening a stream with 120 unfinished jobs ahead costs a few Redis commands, not one per job."""
    api = tenants.env["SDQ_SERVER"]
    for n in range(120):
        _submit_as(api, "bob", f"ahead {n}")
    job_id = _submit_as(api, "bob", "mine")
    client = redis.Redis.from_url(tenants.env["SDQ_REDIS_URL"])

    def calls() -> int:
        return sum(v["calls"] for k, v in client.info("commandstats").items() if k != "cmdstat_info")

    before = calls()
    sock = _open_as(api, "bob", job_id)
    try:
        head = _read_until(sock, b"event: job.state")
        head = _read_until(sock, b"\n\n", head.split(b"event: job.state", 1)[1])
        used = calls() - before
    finally:
        sock.close()
    assert head and b'"state":"queued"' in head
    assert used <= 30, f"{used} Redis commands to open one stream (the queue scan reads every unfinished job)"


def test_a_tenant_over_its_stream_limit_gets_429_with_retry_after(tenants):
    api = tenants.env["SDQ_SERVER"]
    mine, theirs = _submit_as(api, "alice", "streamed"), _submit_as(api, "bob", "streamed too")
    socks = []
    try:
        for _ in range(STREAM_CAP):
            socks.append(_open_as(api, "alice", mine))
            assert _read_until(socks[-1], b"event: job.state").startswith(b"HTTP/1.1 200")
        refused = requests.get(f"{api}/v1/jobs/{mine}/events", headers={"Authorization": f"Bearer {TOKENS['alice']}"},
                               timeout=10, stream=True)
        assert refused.status_code == 429, refused.status_code
        assert int(refused.headers["Retry-After"]) > 0 and refused.json()["error"]["field"] == "events"
        other = _open_as(api, "bob", theirs)  # another tenant is not held up
        socks.append(other)
        assert _read_until(other, b"event: job.state").startswith(b"HTTP/1.1 200")
        socks.pop(0).close()  # alice leaves one: her slot comes back once the server notices

        def reopened():
            resp = requests.get(f"{api}/v1/jobs/{mine}/events", timeout=10, stream=True,
                                headers={"Authorization": f"Bearer {TOKENS['alice']}"})
            resp.close()
            return resp.status_code == 200
        wait_until(reopened, "a stream slot given back after its client left", timeout=60)
    finally:
        for sock in socks:
            sock.close()
