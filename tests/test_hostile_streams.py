"""Event streams must not exhaust the producer: hundreds open at once, the API still answers,
every stream ends after its maximum lifetime with a reconnect hint."""
from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

STREAMS = 300
LIFETIME = 15


@pytest.fixture(scope="module")
def api(stack_factory) -> str:
    """A producer + Redis with no worker (a job waits forever) and streams that live LIFETIME seconds."""
    return stack_factory("streams", env={"SDQ_STREAM_MAX_SECONDS": str(LIFETIME)}).env["SDQ_SERVER"]


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
