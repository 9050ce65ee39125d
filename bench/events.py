"""7. Event fan-out: time for a step-progress event to reach SSE clients of `GET /v1/jobs/{id}/events`.

(a) Publish to SSE client: with the job queued and no worker, `item.progress` events stamped with
their publish time (`bench_t` in the data, which the stream passes through) go out on the job's
Redis channel at a steady rate, exactly as a worker's `JobStore.add_progress` sends them; 1 and
several SSE clients read them. Cancelling the job ends the streams (`job.finished`).
(b) Real progress: a worker makes a job whose items report step progress; a Redis subscriber on
the job's channel stamps each event's arrival, and the SSE client's arrival is compared with it.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any

import redis
import requests

from bench.common import Bench, bench_stack, dist, main_for
from cli.client import sse_events
from sdq.state.keys import events_channel

SIZES = {"full": {"events": 300, "clients": (1, 8), "real_items": 6},
         "quick": {"events": 60, "clients": (1, 4), "real_items": 2}}
RATE = 50.0
"""Synthetic events per second (a worker sends at most 1 / PROGRESS_INTERVAL per running batch)."""
REAL_PARAMS = {"width": 256, "height": 256, "steps": 20, "seed": 7000}


class SSEClient(threading.Thread):
    """Reads one event stream; records (arrival time, event, data) of every frame."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.frames: list[tuple[float, str, dict[str, Any]]] = []
        self.connected = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            with requests.get(self.url, stream=True, timeout=(10, 120)) as resp:
                resp.raise_for_status()
                for event, data in sse_events(resp.iter_lines(chunk_size=None, decode_unicode=True)):
                    self.frames.append((time.time(), event, data))
                    self.connected.set()
        except Exception as exc:  # noqa: BLE001 - reported with the results
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.connected.set()


def _connect(bench: Bench, job_id: str, count: int) -> list[SSEClient]:
    clients = [SSEClient(f"{bench.stack.env['SDQ_SERVER']}/v1/jobs/{job_id}/events") for _ in range(count)]
    for c in clients:
        c.start()
    for c in clients:
        if not c.connected.wait(30) or c.error:
            raise RuntimeError(f"SSE client did not connect: {c.error}")
    return clients


def synthetic(bench: Bench, clients: int, events: int) -> dict[str, Any]:
    """Publish-stamped progress events to `clients` SSE clients of a queued job."""
    job_id, _, _ = bench.submit(1, {"width": 64, "height": 64, "steps": 4})
    readers = _connect(bench, job_id, clients)
    channel = events_channel(job_id)
    for step in range(events):
        bench.r.publish(channel, json.dumps({"event": "item.progress", "data": {
            "index": 0, "step": step + 1, "steps": events, "bench_t": time.time()}}))
        time.sleep(1 / RATE)
    time.sleep(0.5)
    bench.client.cancel(job_id)  # ends every stream with job.finished
    for r in readers:
        r.join(30)
    lat = [t - d["bench_t"] for r in readers for t, e, d in r.frames if e == "item.progress" and "bench_t" in d]
    received = len(lat) / (events * clients)
    return {"clients": clients, "events": events, "received": round(received, 4), "latency_ms": dist(lat, 1000, 3),
            "ended_with_job_finished": all(r.frames and r.frames[-1][1] == "job.finished" for r in readers)}


def real(bench: Bench, n: int) -> dict[str, Any]:
    """A worker's real progress events: Redis subscriber arrival vs SSE client arrival."""
    bench.add_workers(["e1"], "--threads", "1")
    job_id, _, _ = bench.submit(n, REAL_PARAMS)
    sub = redis.Redis.from_url(bench.stack.env["SDQ_REDIS_URL"]).pubsub(ignore_subscribe_messages=True)
    sub.subscribe(events_channel(job_id))
    reader = _connect(bench, job_id, 1)[0]
    seen: dict[tuple, float] = {}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        msg = sub.get_message(timeout=1.0)
        if msg is None:
            continue
        event = json.loads(msg["data"])
        data = event.get("data") or {}
        seen.setdefault((event["event"], data.get("index"), data.get("step")), time.time())
        if event["event"] == "job.finished":
            break
    sub.close()
    reader.join(30)
    bench.stop_workers()
    lat = [t - seen[(e, d.get("index"), d.get("step"))] for t, e, d in reader.frames
           if e == "item.progress" and (e, d.get("index"), d.get("step")) in seen]
    return {"items": n, "params": REAL_PARAMS, "progress_events": len(lat), "latency_ms": dist(lat, 1000, 3)}


def run(opts) -> dict[str, Any]:
    """Synthetic fan-out to 1 and several clients, then real worker progress."""
    cfg = SIZES["quick" if opts.quick else "full"]
    with bench_stack("events", opts) as bench:
        fan = [synthetic(bench, c, cfg["events"]) for c in cfg["clients"]]
        live = real(bench, cfg["real_items"])
    out = {"rate_per_s": RATE, "synthetic": fan, "real": live}
    out["table"] = [["leg", "clients", "events", "received", "p50 ms", "p90 ms", "p99 ms", "max ms"]]
    for f in fan:
        d = f["latency_ms"]
        out["table"].append(["PUBLISH -> SSE client", f["clients"], f["events"], f["received"], d["p50"], d["p90"],
                             d["p99"], d["max"]])
    d = live["latency_ms"]
    out["table"].append(["worker progress: Redis subscriber -> SSE client", 1, live["progress_events"], "",
                         d.get("p50"), d.get("p90"), d.get("p99"), d.get("max")])
    out["findings"] = ["no target was set for this figure (issue 6 asks for the distribution)"]
    return out


if __name__ == "__main__":
    raise SystemExit(main_for("events", run, __doc__.splitlines()[0]))
