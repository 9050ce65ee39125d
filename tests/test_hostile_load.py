"""A bounded load test on loopback: 50 clients submitting small jobs and polling them, plus 200 open
event streams, against the shared stack (one CPU worker). Zero errors, every job completes, and the
p99 latency of status reads is printed."""
from __future__ import annotations

import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests

from tests.test_hostile_streams import _open_stream, _read_until

CLIENTS = 50
STREAMS = 200
DEADLINE_S = 90.0
"""Hard bound; the run takes ~15-30 s on 2 cores."""


def _client(api: str, n: int, latencies: list[float], errors: list[str], lock: threading.Lock) -> str:
    session = requests.Session()
    body = {"prompts": [f"load test {n}"], "params": {"width": 64, "height": 64, "steps": 2, "seed": n}}
    resp = session.post(api + "/v1/jobs", json=body, timeout=30)
    if resp.status_code != 202:
        with lock:
            errors.append(f"submit {resp.status_code}: {resp.text[:200]}")
        return "error"
    job_id = resp.json()["id"]
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        started = time.monotonic()
        resp = session.get(f"{api}/v1/jobs/{job_id}?limit=1", timeout=30)
        with lock:
            latencies.append(time.monotonic() - started)
            if resp.status_code != 200:
                errors.append(f"status {resp.status_code}: {resp.text[:200]}")
                return "error"
        state = resp.json()["state"]
        if state in ("succeeded", "failed", "cancelled"):
            return state
        time.sleep(0.25)
    return "timeout"


def _still_open(sock: socket.socket) -> bool:
    """Whether the server has not closed this connection (pending data or none, but no EOF)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True


@pytest.mark.slow
@pytest.mark.serial
def test_fifty_clients_and_two_hundred_streams(stack, capsys):
    api = stack.env["SDQ_SERVER"]
    parts = urlsplit(api)
    waiting = requests.post(api + "/v1/jobs", json={"prompts": ["never runs"], "requires": {"device": "gpu"},
                                                    "params": {"width": 64, "height": 64, "steps": 2}},
                            timeout=10).json()["id"]
    socks = []
    try:
        socks = [_open_stream(parts.hostname, parts.port, waiting) for _ in range(STREAMS)]
        deadline = time.monotonic() + 60
        heads = [_read_until(s, b"event: job.state", timeout=deadline - time.monotonic()) for s in socks]
        assert all(h.startswith(b"HTTP/1.1 200") and b"event: job.state" in h for h in heads)

        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            states = list(pool.map(lambda n: _client(api, n, latencies, errors, lock), range(CLIENTS)))
        elapsed = time.monotonic() - started
        assert requests.get(api + "/healthz", timeout=5).ok
        assert all(_still_open(sock) for sock in socks)  # no stream was dropped under load
    finally:
        for sock in socks:
            sock.close()
        requests.delete(f"{api}/v1/jobs/{waiting}", timeout=10)
    p50 = statistics.median(latencies)
    p99 = statistics.quantiles(latencies, n=100)[98]
    with capsys.disabled():
        print(f"\nload: {CLIENTS} clients, {STREAMS} open streams, {len(latencies)} status reads in {elapsed:.1f} s; "
              f"status latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    assert errors == []
    assert states == ["succeeded"] * CLIENTS
    assert p99 < 5.0  # generous: the machine is shared; the figure printed above is the measurement
