"""No Redis key grows for ever: after a run of jobs, an upload, job records expiring and a worker
dying, every key left has an owner that deletes or expires it (issue 23, defect 5)."""
from __future__ import annotations

import json
import re
import signal
import time

import redis
import requests

from sdq import defaults
from cli.client import Client
from sdq.records import Item, Job
from sdq.state import keys
from sdq.state.store import JobStore
from tests.conftest import FAST, wait_job, wait_until

# kombu's own key names, spelled here so the test also runs (and fails) on code from before the fix
KOMBU_SEP = "\x06\x16"
KOMBU_BINDINGS = ("_kombu.binding.", "_kombu.binding_permanent.")
KOMBU_DEADLINES = "_kombu.binding_deadlines"
QUEUED_BY_OWNER = getattr(keys, "QUEUED_BY_OWNER_KEY", "sdq:queued-items")
STALE_AGE = getattr(defaults, "UNFINISHED_JOB_MAX_AGE", defaults.JOB_TTL - 24 * 3600)

FAST_BEAT = {"SDQ_HEARTBEAT_INTERVAL": "1", "SDQ_HEARTBEAT_TTL": "4", "SDQ_REAPER_INTERVAL": "1"}
"""A dead worker is gone from the fleet within seconds, and the reaper sweeps every second."""

PRIORITY = "(?:" + re.escape(KOMBU_SEP) + r"\d)?"
FIXED_QUEUE = re.compile(r"^(sdq\.control|sdq\.(any|cpu|gpu)\.\w+\.p\d+|celery\.pidbox|celeryev)" + PRIORITY + "$")
"""Queues (and exchanges) whose number is fixed by the code: the control queue and the routing classes."""


def _orphans(r: redis.Redis) -> list[str]:
    """Every key without an owner that deletes or expires it, with why."""
    live = {n.decode() for n in r.smembers(keys.FLEET_KEY) if r.exists(keys.worker_key(n.decode()))}
    bad = []
    for raw in r.scan_iter(count=1000):
        key = raw.decode("utf-8", "surrogateescape")
        ttl = r.ttl(raw)
        if key.startswith(("sdq:job:", "sdq:upload:", "sdq:rcache:", "sdq:held:", "sdq:upload-bytes:",
                           "sdq:worker:", "sdq:reaper:lock", "sdq:once:", keys.PARKED_FLEET_KEY)):
            if ttl < 0:
                bad.append(f"{key}: never expires")
        elif key.startswith("sdq:jobs:"):
            gone = [m for m in r.zrange(raw, 0, -1) if not r.exists(keys.job_key(m.decode()))]
            if ttl < 0 or gone:
                bad.append(f"{key}: ttl {ttl}, lists {len(gone)} jobs whose records are gone")
        elif key in (keys.ACTIVE_KEY, keys.FINALIZE_KEY):
            gone = [m for m in r.zrange(raw, 0, -1) if not r.exists(keys.job_key(m.decode()))]
            if gone:
                bad.append(f"{key}: lists {len(gone)} jobs whose records are gone")
        elif key == QUEUED_BY_OWNER:
            counted = {k.decode(): int(v) for k, v in r.hgetall(raw).items()}
            actual: dict[str, int] = {}
            for job_id in r.zrange(keys.ACTIVE_KEY, 0, -1):
                owner, queued = r.hmget(keys.job_key(job_id.decode()), "owner", "c:queued")
                if int(queued or 0):
                    actual[(owner or b"").decode()] = actual.get((owner or b"").decode(), 0) + int(queued)
            if counted != actual:
                bad.append(f"{key}: counts {counted}, the jobs hold {actual}")
        elif key == keys.FLEET_KEY:
            dead = {n.decode() for n in r.smembers(raw)} - live
            if dead:
                bad.append(f"{key}: names departed workers {sorted(dead)}")
        elif key.startswith(keys.RUNNING_PREFIX) or key == keys.RUNNING_WORKERS_KEY:
            worker = key[len(keys.RUNNING_PREFIX):] if key.startswith(keys.RUNNING_PREFIX) else None
            if worker is not None and worker not in live:
                bad.append(f"{key}: a departed worker's running set")
        elif key.startswith(KOMBU_BINDINGS) or key.startswith("sdq."):
            queue = re.sub(r"^_kombu\.binding(_permanent)?\.", "", key)
            worker = re.match(r"^sdq\.worker\.(.+?)" + PRIORITY + "$", queue)
            if worker:
                if worker.group(1) not in live:
                    bad.append(f"{key!r}: the queue of departed worker {worker.group(1)}")
            elif not FIXED_QUEUE.match(queue):
                bad.append(f"{key!r}: not a queue sdq declares")
        elif key == KOMBU_DEADLINES:
            departed = [m for m in r.zrange(raw, 0, -1) if b"sdq.worker." in m
                        and not any(f"sdq.worker.{w}".encode() in m for w in live)]
            if departed:
                bad.append(f"{key}: lists bindings of departed workers {departed}")
        elif key in ("unacked", "unacked_mutex", keys.UNACKED_INDEX_KEY):
            pass  # kombu's own bookkeeping, emptied as messages are acknowledged
        elif key == keys.PARKED_KEY:  # dropped at the next recheck once their job is gone
            old = r.zrangebyscore(raw, "-inf", time.time() - defaults.PARKED_RECHECK - 60)
            gone = [m for m in old if not r.exists(keys.job_key(json.loads(m)["chunk"]["job"]))]
            if gone:
                bad.append(f"{key}: {len(gone)} chunks of jobs whose records are gone, past a recheck")
        elif key == keys.OUTBOX_KEY:
            stale = r.zrangebyscore(raw, "-inf", time.time() - 120)
            if stale:  # each entry is published and removed by its writer, or by any heartbeat once due
                bad.append(f"{key}: {len(stale)} messages due for over two minutes and never published")
        else:
            bad.append(f"{key!r}: unknown key (ttl {ttl})")
    return bad


def test_no_key_is_left_without_an_owner(stack_factory):
    st = stack_factory("keys")
    st.worker("keys-stays", "--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd", env=FAST_BEAT)
    leaver = st.worker("keys-leaves", "--device", "cpu", "--threads", "1", env=FAST_BEAT)
    api = st.env["SDQ_SERVER"]
    r = redis.Redis.from_url(st.env["SDQ_REDIS_URL"])
    jobs = JobStore(r)
    wait_until(lambda: r.exists("_kombu.binding.sdq.worker.keys-leaves"), "the leaver's own queue")

    # 1. A run of jobs and an upload.
    from tests.test_uploads import image_bytes

    assert requests.post(api + "/v1/uploads", files={"file": ("a.png", image_bytes("PNG"))}, timeout=30).ok
    done = [requests.post(api + "/v1/jobs", json={"prompts": [f"keys {n}", f"more {n}"], "params": FAST},
                          timeout=30).json()["id"] for n in range(3)]
    # 2. Records expiring: a finished job whose records are gone (30 days on), and a job still queued a
    #    day before its records expire.
    now = time.time()
    jobs.create(Job(id="expiredjob", owner="", state="succeeded", created_at=now - defaults.JOB_TTL - 60, model="m",
                    pipeline="txt2img", seed=1), [])
    r.zrem(keys.ACTIVE_KEY, "expiredjob")
    r.delete(keys.job_key("expiredjob"), keys.items_key("expiredjob"))
    jobs.create(Job(id="stalejob", owner="", state="queued", created_at=now - STALE_AGE - 60,
                    model="m", pipeline="txt2img", seed=1, n_items=2, requires={"device": "gpu"}),
                [Item(index=i, prompt="never made", seed=i, state="queued", steps=2) for i in range(2)])
    # 3. A worker dies.
    leaver.proc.send_signal(signal.SIGKILL)
    leaver.proc.wait(30)

    for job_id in done:
        assert wait_job(Client(api), job_id)["state"] == "succeeded"
    listing = requests.get(api + "/v1/jobs?limit=100", timeout=30).json()
    assert listing["total"] == len(done) + 1, listing["total"]  # the expired job is not counted

    def settled() -> list[str]:
        deadline = time.monotonic() + 60  # the dead worker's record expires, then the next sweep forgets it
        while (orphans := _orphans(r)) and time.monotonic() < deadline:
            time.sleep(1)
        return orphans

    assert not settled()
    wait_until(lambda: jobs.get("stalejob").state == "cancelled", "the stale job cancelled by the reaper", 60)
    wait_until(lambda: r.zcard(keys.FINALIZE_KEY) == 0, "every ended job finalised", 60)
    assert not settled()
    print("keys left:", sorted(json.dumps(k.decode("utf-8", "surrogateescape")) for k in r.scan_iter()))
