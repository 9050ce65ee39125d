"""Work a worker must not run (issue 11 defects 3, 6 and 8): items above its `--max-pixels` or
`requires.min_memory_gb`, models outside `--models`, and the out-of-memory hand-off of a job
cancelled meanwhile."""
from __future__ import annotations

import base64
import io
import json
from typing import Iterator

import pytest
import redis
from PIL import Image

from cli.client import Client
from cli.services import Stack, wait_for
from sdq.defaults import PASS_ON_DELAY
from sdq.state.keys import OUTBOX_KEY, PARKED_KEY
from tests.conftest import FAST, wait_job
from tests.test_faults import FAST_RECOVERY, WARM


def log_text(stack: Stack, worker: str) -> str:
    return (stack.workdir / f"worker-{worker}.log").read_text(errors="replace")


def _body(payload: dict) -> bytes:
    return base64.b64decode(payload["body"])


def broker_messages(r: redis.Redis, job_id: str) -> int:
    """Messages of `job_id` anywhere: queued (any priority list), delivered but unacknowledged, or
    waiting in sdq's outbox to be offered again."""
    queued = [json.loads(m) for key in r.scan_iter("sdq.*") if r.type(key) == b"list" for m in r.lrange(key, 0, -1)]
    unacked = [json.loads(m)[0] for m in r.hvals("unacked")]
    delayed = [m for m in r.zrange(OUTBOX_KEY, 0, -1) if job_id.encode() in m]
    return sum(1 for p in queued + unacked if job_id.encode() in _body(p)) + len(delayed)


@pytest.fixture(scope="module")
def picky(stack_factory) -> Iterator[Stack]:
    """One worker that may load only the tiny SD model and makes images of at most 128x128."""
    st = stack_factory("picky", env=FAST_RECOVERY)
    st.worker("picky", *WARM, "--models", "builtin:tiny-sd", "--max-pixels", str(128 * 128))
    yield st
    st.stop()


def test_a_worker_never_runs_items_above_what_it_advertises(picky):
    """Defect 8: 256x256 items sit in the same queue as 128x128 ones (the smallest pixel class);
    a 128x128 worker leaves them there. min_memory_gb above the device is refused the same way."""
    client = Client(picky.env["SDQ_SERVER"])
    big = client.submit({"model": "builtin:tiny-sd", "prompts": ["big"],
                         "params": {"width": 256, "height": 256, "steps": 2}})["id"]
    heavy = client.submit({"model": "builtin:tiny-sd", "prompts": ["heavy"], "requires": {"min_memory_gb": 1000},
                           "params": {"width": 64, "height": 64, "steps": 2}})["id"]
    wait_for(lambda: f"job {big}: passing the chunk on" in log_text(picky, "picky"), "256x256 passed on", 60)
    wait_for(lambda: f"job {heavy}: passing the chunk on" in log_text(picky, "picky"), "min memory passed on", 60)
    small = client.submit({"model": "builtin:tiny-sd", "prompts": ["small"],
                           "params": {"width": 128, "height": 128, "steps": 2}})["id"]
    assert wait_job(client, small, 120)["state"] == "succeeded"  # the worker works, just not on those
    for job_id in (big, heavy):
        doc = client.job(job_id)
        assert doc["state"] == "queued" and doc["items"][0].get("attempts") is None, doc
        client.cancel(job_id)


def test_chunks_of_a_cancelled_job_no_worker_may_run_are_dropped(picky):
    """Defect 6: a chunk for a model no live worker may load bounces between queue and worker; once
    its job is cancelled the message is dropped instead of bouncing forever."""
    client = Client(picky.env["SDQ_SERVER"])
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buf, format="PNG")
    key = client.upload(buf.getvalue(), "in.png")["key"]
    job_id = client.submit({"model": "builtin:tiny-upscaler", "pipeline": "upscale", "prompts": ["up"],
                            "params": {"init_image": key, "steps": 2}})["id"]
    r = redis.Redis.from_url(picky.env["SDQ_REDIS_URL"])
    wait_for(lambda: r.hlen("unacked") or r.zcard(OUTBOX_KEY), "the worker took the chunk", 60)
    assert client.cancel(job_id)["state"] == "cancelled"
    wait_for(lambda: broker_messages(r, job_id) == 0, "the cancelled job's message dropped", 30)
    wait_for(lambda: f"job {job_id}: dropping a chunk nobody needs any more" in log_text(picky, "picky")
             or parked(r, job_id), "the drop logged (or the chunk parked before the cancel: never bouncing)", 10)


def parked(r: redis.Redis, job_id: str) -> bool:
    """Whether a chunk of `job_id` waits in the parked set (no live worker can take it)."""
    return any(job_id.encode() in m for m in r.zrange(PARKED_KEY, 0, -1))


def test_a_chunk_no_live_worker_can_take_waits_parked_until_one_joins(picky):
    """Issue 39 defect 4: a passed-on chunk that no live worker may take bounced through the outbox,
    the broker and the workers for ever (sharing the outbox's capacity with every other tenant's
    recoveries). It is parked, stays parked while the fleet stays the same, and runs once a worker
    that can take it joins."""
    client = Client(picky.env["SDQ_SERVER"])
    r = redis.Redis.from_url(picky.env["SDQ_REDIS_URL"])
    job_id = client.submit({"model": "builtin:tiny-sd", "prompts": ["wide"],
                            "params": {"width": 256, "height": 256, "steps": 2}})["id"]
    wait_for(lambda: parked(r, job_id), "the chunk parked", 60)
    passes = log_text(picky, "picky").count(f"job {job_id}: passing the chunk on")
    since = json.loads(r.get("sdq:worker:picky"))["last_seen"]
    wait_for(lambda: json.loads(r.get("sdq:worker:picky"))["last_seen"] > since + 3 * PASS_ON_DELAY,
             "the worker's heartbeats for three pass-on delays", 60)
    assert log_text(picky, "picky").count(f"job {job_id}: passing the chunk on") == passes
    assert parked(r, job_id) and broker_messages(r, job_id) == 0
    roomy = picky.worker("roomy", *WARM)
    try:
        assert wait_job(client, job_id, 120)["state"] == "succeeded"
        assert not parked(r, job_id)
    finally:
        roomy.stop()
        picky.services.remove(roomy)


@pytest.mark.slow
def test_out_of_memory_hand_off_of_a_cancelled_job_ends_its_items(stack_factory):
    """Defect 3: the worker runs out of memory (even in low-memory mode) after the job was
    cancelled; the batch ends `cancelled` instead of staying `running` forever."""
    st = stack_factory("oom-cancel", env=FAST_RECOVERY)
    try:
        r = redis.Redis.from_url(st.env["SDQ_REDIS_URL"])
        st.worker("oom", *WARM, "--debug-oom-pixels", "512", env={"SDQ_DEBUG_FAULTS": "1"})
        r.hset("sdq:debug:faults:oom", "load", "pause")
        client = Client(st.env["SDQ_SERVER"])
        job_id = client.submit({"model": "builtin:tiny-sd", "prompts": ["x"],
                                "params": {"width": 64, "height": 64, "steps": 2}})["id"]
        wait_for(lambda: r.exists("sdq:debug:oom:load"), "the worker holding the item", 60)
        client.cancel(job_id)
        st.worker("other", *WARM)  # a live worker to hand the batch to
        r.delete("sdq:debug:faults:oom", "sdq:debug:oom:load")
        doc = wait_job(client, job_id, 60)
        assert doc["state"] == "cancelled" and doc["items"][0]["state"] == "cancelled", doc
    finally:
        st.stop()


def test_a_task_message_that_is_no_chunk_is_dropped_once_and_the_worker_goes_on(stack, client):
    """A broken or hostile sender: each malformed `sdq.generate` body is logged and dropped (not
    delivered again forever), and the same worker then makes a real job."""
    from sdq import contract
    from sdq.celery_app import make_celery

    worker = "w-main"
    before = log_text(stack, worker).count("dropping a task message that is not an sdq chunk")
    bad = ["nonsense", {"job": 7}, {"job": "j", "model": "m", "pipeline": "txt2img", "params": {"width": "64"},
                                    "items": [{"index": 0}]}]
    celery = make_celery(stack.env["SDQ_REDIS_URL"])
    for body in bad:
        celery.send_task(contract.TASK_GENERATE, kwargs={"chunk": body}, queue=contract.queue_for("any", None, 64 * 64))
    wait_for(lambda: log_text(stack, worker).count("dropping a task message that is not an sdq chunk")
             >= before + len(bad), "every bad message dropped", 60)
    job_id = client.submit({"prompts": ["after the bad ones"], "params": FAST})["id"]
    assert wait_job(client, job_id)["state"] == "succeeded"
    log = log_text(stack, worker)
    assert log.count("dropping a task message that is not an sdq chunk") == before + len(bad), log[-3000:]
    for words in ("a chunk is a JSON object, not str", "'job' must be a non-empty string", "'params' must hold"):
        assert words in log
