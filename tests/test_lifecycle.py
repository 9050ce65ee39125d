"""Job lifecycle on real services: cancel, retry, sweeps and grids, resumable download, priorities,
webhooks and micro-batching."""
from __future__ import annotations

import io
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests
from PIL import Image

from cli.client import Client
from cli.services import wait_for
from sdq.exceptions import ApiError
from sdq.gridlayout import LABEL_H, LABEL_W
from sdq.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, tenant_secret, verify
from tests.conftest import FAST, wait_job, wait_until
from tests.test_cli import sdq

WEBHOOK_SECRET = "test-webhook-secret"
BLOCKER = {"prompt": "keeps the worker busy", "width": 256, "height": 256, "steps": 40}
"""One item that takes the single worker a few seconds."""


def _png(store, key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(store.get(key))).convert("RGB")).astype(int)



def wait_final(client: Client, job_id: str) -> dict:
    """Wait until the job ended and its manifest (written just after) is linked from the status."""
    wait_job(client, job_id)
    return wait_until(lambda: (doc := client.job(job_id))["manifest"] and doc, f"manifest of {job_id}", 60)


# -- cancel --------------------------------------------------------------------------------------

def test_cancel_mid_job_stops_running_and_queued_items(client, store, stack):
    items = [{"prompt": "finishes first"}] + [{"prompt": f"big {i}", "width": 256, "height": 256, "steps": 60}
                                              for i in range(4)]
    job_id = client.submit({"items": items, "params": {**FAST, "seed": 1}})["id"]
    # cancel while item 1 is in its denoising loop (item 0's 4 steps done, item 1's steps counting)
    wait_until(lambda: client.job(job_id, limit=0)["steps"]["done"] > FAST["steps"], "item 1 running")
    out = sdq("cancel", job_id, server=stack.env["SDQ_SERVER"])
    assert out.returncode == 0 and job_id in out.stdout
    doc = wait_final(client, job_id)
    assert doc["state"] == "cancelled"
    first, interrupted, *never = doc["items"]
    assert first["state"] == "succeeded"
    assert interrupted["state"] == "cancelled" and interrupted["started_at"] and not interrupted["key"]
    assert all(it["state"] == "cancelled" and it["started_at"] is None and it["worker"] is None for it in never)
    assert doc["counts"] == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 4}
    prefix = f"jobs/{job_id}/"
    keys = store.keys(prefix)
    assert keys == [prefix + "00000.png", prefix + "manifest.json"]
    # nothing more arrives once the cancel has settled: the one worker has since made a later job
    assert wait_job(client, client.submit({"prompts": ["after the cancel"], "params": FAST})["id"])["state"] == "succeeded"
    assert store.keys(prefix) == keys
    assert requests.get(first["url"], timeout=10).content == store.get(first["key"])
    manifest = json.loads(store.get(prefix + "manifest.json"))
    assert manifest["job"]["state"] == "cancelled" and [i["state"] for i in manifest["items"]][:2] == [
        "succeeded", "cancelled"]


def test_cancel_of_a_queued_job_ends_it_and_writes_the_manifest(client, store):
    job_id = client.submit({"prompts": ["never runs"], "params": FAST, "requires": {"device": "gpu"}})["id"]
    assert client.cancel(job_id)["state"] == "cancelled"
    doc = client.job(job_id)
    assert doc["state"] == "cancelled" and doc["items"][0]["started_at"] is None
    # a worker's finalize task writes it (never the HTTP request)
    wait_for(lambda: store.size(f"jobs/{job_id}/manifest.json"), "manifest of the cancelled job", 60)
    assert json.loads(store.get(f"jobs/{job_id}/manifest.json"))["job"]["state"] == "cancelled"


# -- retry ---------------------------------------------------------------------------------------

def _upload_init(client: Client, store, data: bytes) -> str:
    """An init-image key: through POST /v1/uploads where that exists, else written to the bucket."""
    try:
        return client.upload(data, "init.png")["key"]
    except ApiError as exc:
        if exc.status not in (404, 405):
            raise
    key = f"uploads/{uuid.uuid4().hex}.png"
    store.put(key, data, content_type="image/png")
    return key


def _noise_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_retry_completes_a_job_whose_items_failed(client, store):
    good, bad = _noise_png(1), _noise_png(2)
    good_key, bad_key = _upload_init(client, store, good), _upload_init(client, store, bad)
    blocker = client.submit({"items": [BLOCKER], "params": {"seed": 1}})["id"]
    wait_until(lambda: client.job(blocker, limit=0)["state"] == "running", "blocker running")
    items = [{"prompt": "from a good sketch", "init_image": good_key, "seed": 40},
             {"prompt": "from a sketch that goes bad", "init_image": bad_key, "seed": 41}]
    job_id = client.submit({"items": items, "pipeline": "img2img", "params": {**FAST, "strength": 0.75}})["id"]
    # the second init image is broken in the bucket before the worker gets to it
    store.put(bad_key, b"this is not an image", content_type="image/png")
    doc = wait_job(client, job_id)
    assert doc["state"] == "failed", doc["items"]
    ok, failed = doc["items"]
    assert ok["state"] == "succeeded" and failed["state"] == "failed" and failed["error"]
    store.put(bad_key, bad, content_type="image/png")  # fixed: now retry
    resp = client.retry(job_id)
    assert resp["requeued"] == 1 and resp["items"] == [1]
    doc = wait_job(client, job_id)
    assert doc["state"] == "succeeded" and doc["counts"]["succeeded"] == 2
    ok2, fixed = doc["items"]
    assert ok2["finished_at"] == ok["finished_at"] and ok2["attempts"] == 1  # the good item did not run again
    assert fixed["seed"] == 41 and fixed["attempts"] == 2 and fixed["error"] is None
    assert _png(store, fixed["key"]).shape == (64, 64, 3)
    assert client.retry(job_id)["requeued"] == 0  # nothing failed or cancelled any more


# -- sweeps, grids, download ------------------------------------------------------------------

SWEEP = {"guidance_scale": [5, 10], "scheduler": ["ddim", "euler", "pndm"]}


@pytest.fixture(scope="module")
def sweep_job(client):
    resp = client.submit({"prompts": ["a lighthouse"], "params": {**FAST, "seed": 77, "grid": True},
                          "sweep": SWEEP})
    assert resp["items"] == 6
    return wait_final(client, resp["id"])


def test_sweep_gives_the_product_of_values(sweep_job, store):
    doc = sweep_job
    assert doc["state"] == "succeeded" and doc["sweep"] == SWEEP
    got = [(it["params"]["guidance_scale"], it["params"]["scheduler"]) for it in doc["items"]]
    assert got == [(5, "ddim"), (5, "euler"), (5, "pndm"), (10, "ddim"), (10, "euler"), (10, "pndm")]
    assert [it["sweep"] for it in doc["items"]] == [{"guidance_scale": g, "scheduler": s} for g, s in got]
    assert {it["seed"] for it in doc["items"]} == {77}  # cells compare settings, not noise
    images = [_png(store, it["key"]) for it in doc["items"]]
    assert np.abs(images[0] - images[3]).mean() > 1  # guidance 5 vs 10 really differ


def test_grid_is_a_labeled_sheet_of_the_sweep(sweep_job, store):
    doc = sweep_job
    key = f"jobs/{doc['id']}/grid.png"
    assert key in store.keys(f"jobs/{doc['id']}/") and doc["grid"]
    grid = Image.open(io.BytesIO(store.get(key))).convert("RGB")
    assert grid.size == (LABEL_W + 3 * 64, LABEL_H + 2 * 64)  # columns: scheduler; rows: guidance
    sheet = np.asarray(grid).astype(int)
    for pos, item in enumerate(doc["items"]):
        r, c = divmod(pos, 3)
        cell = sheet[LABEL_H + r * 64:LABEL_H + (r + 1) * 64, LABEL_W + c * 64:LABEL_W + (c + 1) * 64]
        assert np.array_equal(cell, _png(store, item["key"])), (r, c)
    assert (sheet[:LABEL_H, LABEL_W:] < 128).any() and (sheet[LABEL_H:, :LABEL_W] < 128).any()  # labels drawn


@pytest.mark.parametrize("sweep, field", [
    ({"colour": ["red"]}, "sweep.colour"),
    ({"guidance_scale": [7, 500]}, "sweep.guidance_scale"),
    ({"scheduler": ["ddim", "warp"]}, "sweep.scheduler"),
    ({"steps": []}, "sweep.steps"),
    ({"seed": [-1]}, "sweep.seed"),
    ({"width": [100]}, "sweep.width"),
    ({"steps": [4, 4]}, "sweep.steps"),
    ({"steps": "4"}, "sweep.steps"),
])
def test_bad_sweeps_are_422_naming_the_key(stack, sweep, field):
    resp = requests.post(stack.env["SDQ_SERVER"] + "/v1/jobs", json={"prompts": ["a"], "sweep": sweep}, timeout=10)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field


def test_download_is_resumable_and_writes_grid(sweep_job, store, stack, tmp_path):
    server, job_id = stack.env["SDQ_SERVER"], sweep_job["id"]
    out = sdq("download", job_id, str(tmp_path), "--grid", server=server)
    assert out.returncode == 0 and "(6 downloaded)" in out.stderr, out.stderr
    assert json.loads((tmp_path / "manifest.json").read_text())["job"]["id"] == job_id
    assert Image.open(tmp_path / "grid.png").size == (LABEL_W + 3 * 64, LABEL_H + 2 * 64)
    # an interrupted earlier run: one file missing, one cut short, a stray partial file
    (tmp_path / "00001.png").unlink()
    data = (tmp_path / "00002.png").read_bytes()
    (tmp_path / "00002.png").write_bytes(data[:100])
    (tmp_path / "00003.part").write_bytes(b"partial")
    out = sdq("download", job_id, str(tmp_path), server=server)
    assert out.returncode == 0 and "(2 downloaded)" in out.stderr, out.stderr
    for it in sweep_job["items"]:
        assert (tmp_path / f"{it['index']:05d}.png").read_bytes() == store.get(it["key"])
    assert "00001.png" in (tmp_path / "index.html").read_text()


# -- webhooks: target checks ------------------------------------------------------------------

@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/",
                                 "http://[::1]:8080/", "http://169.254.169.254/latest", "ftp://example.com/x",
                                 "file:///etc/passwd", "http://user:pw@8.8.8.8/", "not a url"])
def test_webhook_to_private_or_non_http_target_is_refused(stack, url):
    resp = requests.post(stack.env["SDQ_SERVER"] + "/v1/jobs",
                         json={"prompts": ["a"], "params": FAST, "webhook_url": url}, timeout=10)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == "webhook_url"


# -- one private worker: priorities, webhooks, micro-batching -----------------------------------

@pytest.fixture(scope="module")
def solo(stack_factory):
    """A private stack with one worker (micro-batches of 4) that may call loopback webhooks."""
    st = stack_factory("lifecycle-solo", env={"SDQ_WEBHOOK_ALLOW_PRIVATE": "1", "SDQ_WEBHOOK_SECRET": WEBHOOK_SECRET})
    st.worker("w-solo", "--device", "cpu", "--threads", "1", "--max-batch", "4", "--preload", "builtin:tiny-sd")
    return st


def test_high_priority_job_is_served_before_an_earlier_low_one(solo):
    client = Client(solo.env["SDQ_SERVER"])
    blocker = client.submit({"items": [BLOCKER], "params": {"seed": 2}})["id"]
    wait_until(lambda: client.job(blocker, limit=0)["state"] == "running", "blocker running")
    low = client.submit({"prompts": ["low 1", "low 2", "low 3"], "params": FAST, "priority": 1})["id"]
    high = client.submit({"prompts": ["high 1", "high 2", "high 3"], "params": FAST, "priority": 9})["id"]
    assert client.job(blocker, limit=0)["state"] == "running"  # both waited behind the busy worker
    low_doc, high_doc = wait_job(client, low), wait_job(client, high)
    assert low_doc["state"] == high_doc["state"] == "succeeded"
    assert max(it["started_at"] for it in high_doc["items"]) < min(it["started_at"] for it in low_doc["items"])


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes]] = []
    fail_first = 1

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        status = 500 if len(type(self).received) <= type(self).fail_first else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_is_signed_and_retried_after_a_failure(solo):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Client(solo.env["SDQ_SERVER"])
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        job_id = client.submit({"prompts": ["hooked"], "params": FAST, "webhook_url": url})["id"]
        assert wait_job(client, job_id)["state"] == "succeeded"
        wait_until(lambda: len(_Hook.received) >= 2, "webhook retried", timeout=60)
    finally:
        server.shutdown()
    assert len(_Hook.received) == 2  # the first answer was 500; the retry got 200 and stopped
    for headers, body in _Hook.received:
        # signed with the (token-less) tenant's own secret, not the operator's master secret
        assert verify(tenant_secret(WEBHOOK_SECRET, ""), headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert not verify(WEBHOOK_SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        doc = json.loads(body)
        assert doc["event"] == "job.finished" and doc["job"]["id"] == job_id
        assert doc["job"]["state"] == "succeeded" and doc["job"]["counts"]["succeeded"] == 1
        assert doc["job"]["manifest_key"] == f"jobs/{job_id}/manifest.json"


def test_batched_images_equal_unbatched_ones(solo, client, store):
    """64 items: chunks of 4 on the one-worker stack run as batches of 4; the shared worker runs 1 by 1."""
    body = {"prompts": [f"batch test prompt {i}" for i in range(64)], "params": {**FAST, "steps": 2, "seed": 900}}
    solo_client = Client(solo.env["SDQ_SERVER"])
    batched_id, single_id = solo_client.submit(body)["id"], client.submit(body)["id"]  # both workers at once
    batched, single = wait_job(solo_client, batched_id), wait_job(client, single_id)
    assert batched["state"] == single["state"] == "succeeded"
    solo_items = solo_client.all_items(batched["id"])[1]
    shared_items = client.all_items(single["id"])[1]
    assert {it["batch"] for it in solo_items} == {4}
    assert {it["batch"] for it in shared_items} == {1}
    diffs = []
    for a, b in zip(solo_items, shared_items):
        assert a["seed"] == b["seed"] and a["prompt"] == b["prompt"]
        diffs.append(np.abs(_png(store, a["key"]) - _png(store, b["key"])))
    # documented tolerance: batched and one-by-one calls may differ by float rounding only
    assert max(d.max() for d in diffs) <= 2 and np.mean([d.mean() for d in diffs]) <= 0.05
    other = np.abs(_png(store, solo_items[0]["key"]) - _png(store, shared_items[1]["key"])).mean()
    assert other > 5  # the comparison can fail


def test_jobstore_redelivered_chunk_of_a_cancelled_job_ends_it_once(stack):
    """JobStore on the real Redis: cancel with an item running, then that item's message comes again."""
    import redis

    from sdq.records import Item, Job
    from sdq.state.store import JobStore

    jobs = JobStore(redis.Redis.from_url(stack.env["SDQ_REDIS_URL"]))
    job_id = uuid.uuid4().hex
    items = [Item(index=i, prompt="p", seed=i, steps=4) for i in range(2)]
    jobs.create(Job(id=job_id, owner="jobstore-test", state="queued", created_at=time.time(), n_items=2), items)
    ended: list[str] = []
    assert jobs.start_items(job_id, [0], "w-dead", "cpu", "fp32", ended.append) == [0]
    assert jobs.cancel(job_id) == ("running", False)  # item 0 still running: the job has not ended
    assert jobs.get(job_id).counts == {"queued": 0, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 1}
    assert jobs.start_items(job_id, [0], "w-other", "cpu", "fp32", ended.append) == []
    assert ended == [job_id] and jobs.get(job_id).state == "cancelled"
    assert jobs.start_items(job_id, [0], "w-other", "cpu", "fp32", ended.append) == [] and ended == [job_id]
    assert jobs.cancel(job_id) == ("cancelled", False)
    assert sorted(it.index for it in jobs.retry(job_id)) == [0, 1]
    assert jobs.get(job_id).state == "queued" and jobs.get(job_id).counts["queued"] == 2
    assert jobs.cancel(job_id) == ("cancelled", True)  # nothing running: this call ends it
