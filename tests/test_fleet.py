"""Heterogeneous workers on real services: capability records, routing by pixel class, a dead
worker's items going back to the queue, and the out-of-memory fallback (issue 3)."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
from PIL import Image

from sdq import contract
from cli.client import Client
from cli.services import wait_for
from sdq.infotext import parse_infotext
from tests.conftest import wait_job

WARM = ("--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd")
"""Every test worker: CPU, one torch thread, tiny model loaded at start."""

RECORD_FIELDS = ("name", "host", "device", "device_name", "dtype", "memory_total_gb", "memory_free_gb",
                 "pipelines", "models", "loaded_models", "max_pixels", "max_batch", "queues", "items_done",
                 "current_item", "started_at", "last_seen")


def start_workers(stack, *specs: tuple[str, ...]) -> dict:
    """Start workers (name, args...) together, then wait until each joined the fleet."""
    import redis

    svcs = {name: stack.worker(name, *args, wait=False) for name, *args in specs}
    client = redis.Redis.from_url(stack.env["SDQ_REDIS_URL"])
    for name, svc in svcs.items():
        wait_for(lambda: client.exists(f"sdq:worker:{name}"), f"worker {name}", 180, svc.proc)
    return svcs


def fleet_names(client: Client) -> set[str]:
    return {w["name"] for w in client.workers()}


def workers_moved_on(client: Client) -> None:
    """Wait until the live workers have made a small job submitted now, on queues they all serve: they
    were consuming all along, so work submitted earlier that is still queued is work they passed over."""
    names = fleet_names(client)
    probe = client.submit({"prompts": [f"probe {i}" for i in range(4 * len(names))],
                           "params": {"width": 64, "height": 64, "steps": 1}})
    doc = wait_job(client, probe["id"], timeout=240)
    assert doc["state"] == "succeeded", doc


def check_made_by(store, item: dict, worker: str) -> None:
    """The item's record and its PNG's infotext both name the worker, device and dtype."""
    assert (item["state"], item["worker"], item["device"], item["dtype"]) == ("succeeded", worker, "cpu", "fp32")
    img = Image.open(io.BytesIO(store.get(item["key"])))
    img.load()
    info = parse_infotext(img.info["parameters"])
    assert (info["Worker"], info["Device"], info["Dtype"]) == (worker, "cpu", "fp32")
    assert int(info["Seed"]) == item["seed"]


def test_fp16_on_a_cpu_is_refused_at_start(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cli", "worker", "--device", "cpu", "--dtype", "fp16",
                          "--name", "refused"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "SDQ_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert out.returncode != 0
    assert "fp16" in out.stderr and "cpu" in out.stderr and "--dtype fp32" in out.stderr, out.stderr


# -- two workers with different pixel limits --------------------------------------------------------

@pytest.fixture(scope="module")
def fleet(stack_factory):
    """Producer capped at 768x768; a small (256x256) and a large (512x512) CPU worker."""
    st = stack_factory("fleet", env={"SDQ_MAX_PIXELS": str(768 * 768)})
    start_workers(st, ("small", *WARM, "--max-pixels", "65536"), ("large", *WARM, "--max-pixels", "262144"))
    yield st
    st.stop()  # free the CPU for the rest of the session


@pytest.fixture(scope="module")
def fleet_client(fleet) -> Client:
    return Client(fleet.env["SDQ_SERVER"])


def test_workers_view_shows_each_capability_record(fleet, fleet_client):
    workers = {w["name"]: w for w in fleet_client.workers()}
    assert set(workers) == {"small", "large"}
    for name, pixels in (("small", 65536), ("large", 262144)):
        w = workers[name]
        assert not [f for f in RECORD_FIELDS if f not in w], w
        assert (w["host"], w["device"], w["dtype"], w["max_pixels"], w["max_batch"]) == (
            socket.gethostname(), "cpu", "fp32", pixels, 1)
        assert w["device_name"] and w["memory_total_gb"] > 0 and 0 <= w["memory_free_gb"] <= w["memory_total_gb"]
        assert "txt2img" in w["pipelines"] and "builtin:tiny-sd" in w["models"]
        assert w["loaded_models"] == ["builtin:tiny-sd"]
        assert w["current_item"] is None and w["items_done"] == 0
        assert w["started_at"] <= w["last_seen"] <= time.time() + 1
        assert contract.CONTROL_QUEUE in w["queues"] and "sdq.cpu.fp32.p256" in w["queues"]
    assert not [q for q in workers["small"]["queues"] if q.endswith(".p512")]
    assert {"sdq.any.any.p512", "sdq.cpu.fp32.p512"} <= set(workers["large"]["queues"])
    # `sdq workers --json` shows the same fleet
    out = subprocess.run([sys.executable, "-m", "cli", "--server", fleet.env["SDQ_SERVER"], "workers", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert {w["name"] for w in json.loads(out.stdout)} == {"small", "large"}


def test_work_beyond_the_producers_hard_limit_is_422(fleet):
    resp = requests.post(fleet.env["SDQ_SERVER"] + "/v1/jobs", timeout=10,
                         json={"prompts": ["too big"], "params": {"width": 1024, "height": 1024}})
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["code"] == "too_large" and str(768 * 768) in err["message"]


def test_512_job_is_made_only_by_the_larger_worker(fleet_client, store):
    resp = fleet_client.submit({"prompts": ["a", "b", "c"], "params": {"width": 512, "height": 512, "steps": 2}})
    assert resp["warnings"] == []
    doc = wait_job(fleet_client, resp["id"], timeout=240)
    assert doc["state"] == "succeeded", doc
    for item in doc["items"]:
        check_made_by(store, item, "large")


def test_256_job_may_use_both_workers(fleet_client, store):
    resp = fleet_client.submit({"prompts": [f"p{i}" for i in range(8)],
                                "params": {"width": 256, "height": 256, "steps": 2, "seed": 5}})
    assert resp["warnings"] == []
    doc = wait_job(fleet_client, resp["id"], timeout=240)
    assert doc["state"] == "succeeded", doc
    for item in doc["items"]:
        check_made_by(store, item, item["worker"])
    assert {it["worker"] for it in doc["items"]} == {"small", "large"}


def test_gpu_only_work_is_accepted_with_a_warning_and_left_for_a_gpu(fleet_client):
    resp = fleet_client.submit({"prompts": ["on a gpu"], "requires": {"device": "gpu"},
                                "params": {"width": 64, "height": 64, "steps": 2}})
    assert len(resp["warnings"]) == 1 and "sdq.gpu.any.p256" in resp["warnings"][0]
    workers_moved_on(fleet_client)
    doc = fleet_client.job(resp["id"])
    assert doc["state"] == "queued" and doc["counts"]["queued"] == 1 and doc["warnings"] == resp["warnings"]


def test_work_no_live_worker_serves_waits_for_a_capable_worker(fleet, fleet_client, store):
    resp = fleet_client.submit({"prompts": ["wide"], "params": {"width": 576, "height": 576, "steps": 2}})
    assert len(resp["warnings"]) == 1 and "sdq.any.any.p768" in resp["warnings"][0], resp
    workers_moved_on(fleet_client)  # both live workers took later work, and neither took this
    doc = fleet_client.job(resp["id"])
    assert doc["state"] == "queued" and doc["items"][0]["worker"] is None
    start_workers(fleet, ("big", *WARM, "--max-pixels", str(768 * 768)))
    doc = wait_job(fleet_client, resp["id"], timeout=240)
    assert doc["state"] == "succeeded", doc
    check_made_by(store, doc["items"][0], "big")
    assert fleet_names(fleet_client) == {"small", "large", "big"}


# -- leases: a dead worker's chunk goes back to the queue, a live one's never does ---------------------

VT = 8
"""Visibility timeout of the lease stack (seconds), well below the long item's run time."""

LONG = {"width": 512, "height": 512, "steps": 50}
"""An item that takes ~7 s or more on one CPU thread."""
LONGER = {**LONG, "steps": 150}
"""An item that takes ~20 s or more on one CPU thread: well past the visibility timeout."""


@pytest.fixture(scope="module")
def lease_stack(stack_factory):
    st = stack_factory("leases", env={"SDQ_VISIBILITY_TIMEOUT": str(VT)})
    svcs = start_workers(st, ("wa", *WARM), ("wb", *WARM))
    yield st, svcs
    st.stop()


def test_a_live_worker_keeps_an_item_longer_than_the_visibility_timeout(lease_stack):
    st, _ = lease_stack
    client = Client(st.env["SDQ_SERVER"])
    resp = client.submit({"prompts": ["slow"], "params": {**LONGER, "seed": 1}})
    doc = wait_job(client, resp["id"], timeout=300)
    item = doc["items"][0]
    assert doc["state"] == "succeeded", doc
    assert item["duration_s"] > 1.5 * VT, item  # it did outlive the timeout...
    assert item["attempts"] == 1, item  # ...and the idle worker never got it a second time


def test_a_killed_workers_item_is_back_in_the_queue_and_made_by_another(lease_stack):
    st, svcs = lease_stack
    client = Client(st.env["SDQ_SERVER"])
    resp = client.submit({"prompts": ["orphan"], "params": {**LONG, "seed": 2}})
    wait_for(lambda: client.job(resp["id"], limit=0)["steps"]["done"] > 0, "item in its denoising loop", 120)
    victim = client.job(resp["id"])["items"][0]["worker"]
    survivor = ({"wa", "wb"} - {victim}).pop()
    svcs[victim].proc.send_signal(signal.SIGKILL)  # no clean shutdown: nothing is handed back
    killed = time.monotonic()
    svcs[victim].proc.wait(10)
    gone = requeued = None
    while time.monotonic() - killed < 120:
        if gone is None and victim not in fleet_names(client):
            gone = time.monotonic() - killed
        item = client.job(resp["id"])["items"][0]
        if requeued is None and item["worker"] == survivor:
            requeued = time.monotonic() - killed
        if gone is not None and item["state"] == "succeeded":
            break
        time.sleep(0.5)
    assert gone is not None and gone < 45, gone
    assert requeued is not None and requeued < 60, requeued
    # the survivor made it: re-queued from the dead worker (a second attempt), or as the straggler backup
    # an idle worker starts when the dead run's step pace stalls (then the first attempt, backed up by it)
    assert (item["state"], item["worker"]) == ("succeeded", survivor), item
    won_as_backup = any(run.get("backup") and run["worker"] == survivor and run["outcome"] == "won"
                        for run in item.get("runs") or [])
    assert item["attempts"] == 2 or (item["attempts"] == 1 and won_as_backup), item
    assert fleet_names(client) == {survivor}


# -- out of memory ----------------------------------------------------------------------------------

def test_out_of_memory_retries_in_low_memory_mode(stack_factory, store):
    """`--debug-oom-pixels 4096`: a call over 4096 output pixels raises MemoryError (16384 once the
    model is in low-memory mode), standing in for a device that runs out of memory."""
    st = stack_factory("oom")
    start_workers(st, ("tight", *WARM, "--debug-oom-pixels", "4096"))
    client = Client(st.env["SDQ_SERVER"])
    small = wait_job(client, client.submit({"prompts": ["fits"], "params": {"width": 64, "height": 64,
                                                                            "steps": 2}})["id"])
    assert small["items"][0]["oom_retries"] is None and small["items"][0]["low_memory"] is None
    # 128x128 does not fit: out of memory, retried in low-memory mode on the same worker
    doc = wait_job(client, client.submit({"prompts": ["tight"], "params": {"width": 128, "height": 128,
                                                                          "steps": 2}})["id"])
    item = doc["items"][0]
    assert doc["state"] == "succeeded", doc
    assert (item["oom_retries"], item["low_memory"], item["attempts"]) == (1, True, 1), item
    check_made_by(store, item, "tight")
    # 256x256 does not fit even in low-memory mode: the item fails and says why
    doc = wait_job(client, client.submit({"prompts": ["huge"], "params": {"width": 256, "height": 256,
                                                                         "steps": 2}})["id"])
    item = doc["items"][0]
    assert (doc["state"], item["state"], item["low_memory"]) == ("failed", "failed", True), item
    assert "out of memory on worker tight" in item["error"] and "low-memory mode" in item["error"], item
    assert "no other live worker can take it" in item["error"], item
    assert "tight" in fleet_names(client)  # the worker lives on


def test_out_of_memory_in_low_memory_mode_hands_the_item_to_another_worker(stack_factory, store):
    """A worker whose device cannot make an image even in low-memory mode gives the item back to
    the queue; a worker with room makes it, and the item names the worker that could not."""
    st = stack_factory("handoff", env={"SDQ_HEARTBEAT_INTERVAL": "2"})  # passed-on chunks come back sooner
    # 'tight' holds 64x64 per call (128x128 in low-memory mode): a 512x512 image never fits it
    start_workers(st, ("tight", *WARM, "--debug-oom-pixels", "4096"), ("roomy", *WARM))
    client = Client(st.env["SDQ_SERVER"])
    # four one-item messages, so the idle 'tight' takes at least one of them
    job = client.submit({"prompts": [f"big {i}" for i in range(4)], "params": {"width": 512, "height": 512,
                                                                              "steps": 1}})
    doc = wait_job(client, job["id"], timeout=300)
    assert doc["state"] == "succeeded", doc
    for item in doc["items"]:
        check_made_by(store, item, "roomy")
        assert item["oom_workers"] in (None, ["tight"]), item
    handed = [it for it in doc["items"] if it["oom_workers"]]
    assert handed, "tight took none of the four items: the hand-off was not exercised"
    assert all(it["attempts"] == 2 for it in handed), handed
    assert doc["steps"] == {"done": 4, "total": 4}, doc["steps"]
    st.stop()


# -- warm models -----------------------------------------------------------------------------------

def test_items_go_to_the_idle_worker_that_holds_the_model(stack_factory):
    """'warm' has the model loaded, 'cold' has none: while 'warm' is free, 'cold' leaves it the
    work instead of loading the model (without affinity 'cold' takes about half, so six jobs in a
    row all on 'warm' by chance is a 1-in-64 event)."""
    st = stack_factory("affinity")
    start_workers(st, ("warm", *WARM), ("cold", "--device", "cpu", "--threads", "1"))
    client = Client(st.env["SDQ_SERVER"])
    makers = []
    for i in range(6):
        doc = wait_job(client, client.submit({"prompts": [f"affinity {i}"],
                                              "params": {"width": 64, "height": 64, "steps": 1}})["id"])
        assert doc["state"] == "succeeded", doc
        makers.append(doc["items"][0]["worker"])
    assert makers == ["warm"] * 6, makers
    cold = next(w for w in client.workers() if w["name"] == "cold")
    assert cold["loaded_models"] == [], cold
