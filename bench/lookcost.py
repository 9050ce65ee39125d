"""What an idle worker's look for stragglers costs Redis (`workers.running.backups.Backups.candidates`).

A real redis-server holds a fleet of W worker records, each busy with one item of its own job
(nothing queued, so every item is watched; the idle worker is a CPU one, so none is late for it: the idle poll's usual case). One idle
worker looks L times; Redis' own time comes from `INFO commandstats`, the client's wall time per
look from the clock. `python -m bench.lookcost`."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from typing import Any

import redis

from bench.common import command_delta, redis_command_stats
from cli.services import free_port
from sdq.records import WorkerRecord
from sdq.state import fleet, keys
from sdq.state.store import JobStore
from workers.running.backups import Backups
from workers.running.routing import Router
from workers.running.speedometer import Speedometer

PARAMS = {"width": 512, "height": 512, "steps": 20, "scheduler": "euler", "guidance_scale": 7.5}
LOOKS = 2000


def fleet_of(r: redis.Redis, workers: int) -> None:
    """`workers` busy workers, each on item 0 of its own job, started now, expected to take 60 s."""
    now = time.time()
    for i in range(workers):
        job = f"job{i}"
        r.hset(keys.job_key(job), mapping={"c:queued": 0, "c:running": 1})
        r.hset(keys.progress_key(job), "0", 1)  # too few steps for a pace: as published, far from late
        fleet.publish(r, WorkerRecord(name=f"w{i}", kind="gpu", queues=["q"], models=["m"], current_item={
            "job": job, "items": [0], "running": [0], "queue": "q", "model": "m", "pipeline": "txt2img",
            "params": PARAMS, "since": now - 0.6, "expected_s": 60.0}), ttl=600)


def measure(workers: int) -> dict[str, Any]:
    """Cost of one look at a fleet of `workers` busy workers."""
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", "",
                                 "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
        try:
            r = redis.Redis(port=port)
            for _ in range(100):
                try:
                    r.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            fleet_of(r, workers)
            backups = Backups("idle", JobStore(r), Router("idle", ["m"], 10**7, 80.0, Speedometer("cpu")),
                              Speedometer("cpu"), lambda: True, lambda chunk: None, ["q"])
            before = redis_command_stats(r)
            t0 = time.perf_counter()
            for _ in range(LOOKS):
                assert not backups.tick()
            wall = (time.perf_counter() - t0) / LOOKS
            stats = command_delta(before, redis_command_stats(r), LOOKS)
        finally:
            proc.terminate()
            proc.wait()
    calls = sum(v["calls_per_item"] for v in stats.values())
    usec = sum(v["server_us_per_item"] for v in stats.values())
    return {"workers": workers, "watched": backups.watched, "commands_per_look": round(calls, 1),
            "redis_us_per_look": round(usec, 1), "client_ms_per_look": round(wall * 1000, 3), "commands": stats}


if __name__ == "__main__":
    for n in (1, 10, 100):
        print(measure(n))
