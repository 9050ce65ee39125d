"""Pulling pushed (`store:NAME`) models under faults (issue 22 defect 5): two processes of one machine
pulling one model at once, an S3 outage in the middle of a download, and a worker whose bucket is
down while it pulls (the items go back to the queue, never failed). Real SeaweedFS, real processes;
outages through a TCP proxy in front of the S3 server."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

from sdq.exceptions import ModelError
from sdq.sources import STORE_MANIFEST
from storage import ResultStore
from storage.models import push
from tests.conftest import TEST_BUCKET, wait_until
from tests.tcpproxy import TcpProxy

MB = 1024 * 1024


def _model(root: Path, size: int) -> Path:
    """A diffusers-shaped folder with one big random weights file (downloads long enough to overlap)."""
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (root / "unet" / "diffusion_pytorch_model.bin").write_bytes(os.urandom(size))
    return root


def _verified(folder: Path, manifest: dict) -> bool:
    """Every file of `manifest` in `folder` with its SHA-256, the local manifest the same, no `.part` left."""
    for entry in manifest["files"]:
        if hashlib.sha256((folder / entry["path"]).read_bytes()).hexdigest() != entry["sha256"]:
            return False
    local = json.loads((folder / STORE_MANIFEST).read_text(encoding="utf-8"))
    return local == manifest and not list(folder.rglob("*.part"))


PULL = """
import os, pathlib, sys, time
from storage import ResultStore
from storage.models import pull
bucket, endpoint, name, go, cache = sys.argv[1:]
store = ResultStore(bucket, endpoint, outage_limit=30)
pathlib.Path(go + f".ready-{os.getpid()}").touch()
while not pathlib.Path(go).exists():
    time.sleep(0.002)
print(pull(store, name, pathlib.Path(cache)))
"""


def test_two_processes_pulling_one_model_at_once_both_end_with_it_verified(store, s3_url, tmp_path):
    """Two workers of one host asked for the same new model: one pulls (a file lock beside the model's
    folder), the other waits and finds it complete; neither appends to the other's `.part` file."""
    manifest = push(store, _model(tmp_path / "src", 48 * MB), "pulled-twice")
    cache, go = tmp_path / "cache", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", PULL, TEST_BUCKET, s3_url, "pulled-twice", str(go), str(cache)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    wait_until(lambda: len(list(tmp_path.glob("go.ready-*"))) == 2 or any(p.poll() is not None for p in procs),
               "both pullers ready", 120)
    go.touch()  # both start their pull at the same moment
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    folder = cache / "store" / "pulled-twice"
    assert [out.strip() for out, _ in outs] == [str(folder)] * 2
    assert _verified(folder, manifest)


@pytest.fixture
def proxy(s3_url):
    """A TCP proxy in front of the S3 server, up."""
    p = TcpProxy(urlparse(s3_url).port)
    p.up()
    yield p
    p.down()


def test_a_long_pull_reports_progress_as_it_goes(store, s3_url, tmp_path):
    """Issue 39 defect 7: a pull called the store's hook (the worker's lease progress) only on a retry,
    so a long, healthy download looked like a hung worker past its stall timeout."""
    from storage.models import CHUNK, pull

    manifest = push(store, _model(tmp_path / "src", 3 * CHUNK + 1), "long-pull")
    calls: list[int] = []
    watched = ResultStore(TEST_BUCKET, s3_url, outage_limit=30, on_retry=lambda: calls.append(1))
    assert _verified(pull(watched, "long-pull", tmp_path / "cache"), manifest)
    assert len(calls) >= 4  # every chunk received counts (no retry happened)


def test_an_outage_in_the_middle_of_a_download_is_ridden_out_and_resumed(store, proxy, tmp_path):
    """The connection is cut 4 MB into a 24 MB file and S3 stays down until the pull has retried: it
    resumes from its `.part` file once S3 is back (the store's backoff, not a failure)."""
    from storage.models import pull

    size = 24 * MB
    manifest = push(store, _model(tmp_path / "src", size), "cut-mid-download")
    retries = threading.Event()
    behind = ResultStore(TEST_BUCKET, proxy.url, outage_limit=120, backoff_cap=0.5, on_retry=retries.set)
    out: dict = {}

    def run() -> None:
        try:
            out["path"] = pull(behind, "cut-mid-download", tmp_path / "cache")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            out["error"] = exc

    proxy.cut_after(4 * MB)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(proxy.cut.is_set, "the connection cut mid-download", 60)
    wait_until(lambda: retries.is_set() or not thread.is_alive(), "a retry while S3 is down", 60)
    proxy.up()
    thread.join(120)
    assert "error" not in out, repr(out.get("error"))
    folder = tmp_path / "cache" / "store" / "cut-mid-download"
    assert out["path"] == folder and _verified(folder, manifest)
    assert proxy.served < size * 1.5  # resumed where it stopped, not fetched again from the start


def test_a_pull_whose_bucket_stays_down_is_unavailable_not_a_bad_model(store, proxy, tmp_path):
    """Beyond the outage limit the pull raises ModelUnavailable (the worker gives the items back) and
    keeps what it fetched; a bad model is still a ModelError."""
    from sdq.exceptions import ModelUnavailable
    from storage.models import pull

    manifest = push(store, _model(tmp_path / "src", 8 * MB), "down-for-good")
    behind = ResultStore(TEST_BUCKET, proxy.url, outage_limit=1.5, backoff_cap=0.5)
    proxy.cut_after(2 * MB)  # the manifest and part of the file, then S3 is gone
    with pytest.raises(ModelUnavailable, match="resumes on the next try"):
        pull(behind, "down-for-good", tmp_path / "cache")
    assert not isinstance(ModelUnavailable("x"), ModelError)
    parts = list((tmp_path / "cache" / "store" / "down-for-good").rglob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size > 0  # kept for the next try
    with pytest.raises(ModelUnavailable, match="manifest"):  # down before the manifest is read
        pull(behind, "down-for-good", tmp_path / "cache")
    proxy.up()
    assert _verified(pull(behind, "down-for-good", tmp_path / "cache"), manifest)
    with pytest.raises(ModelError, match="no pushed model"):  # reachable, but no such model: a bad model
        pull(behind, "never-pushed-here", tmp_path / "cache")
    # a file changed in the bucket after the push: complete, verified and wrong -> the items fail
    store.put("models/down-for-good/files/model_index.json", b'{"changed": true}')
    (tmp_path / "cache" / "store" / "down-for-good" / STORE_MANIFEST).unlink()
    (tmp_path / "cache" / "store" / "down-for-good" / "model_index.json").unlink()
    with pytest.raises(ModelError, match="SHA-256"):
        pull(behind, "down-for-good", tmp_path / "cache")


# -- a worker whose bucket goes down: its items go back to the queue, the job ends once S3 is back ---
MODEL = "store:pulled-in-outage"


@pytest.fixture(scope="module")
def outage(stack_factory, store, models_dir, tmp_path_factory):
    """A stack whose one worker reaches S3 through a proxy (outage limit 2 s) and has an empty model
    cache; the producer reaches S3 directly. Yields (client, its job store, proxy, the worker's models dir)."""
    from cli.client import Client
    from sdq.sources import builtin_path
    from sdq.state.redisconn import connect
    from sdq.state.store import JobStore
    from tests.test_faults import FAST_RECOVERY

    push(store, builtin_path(models_dir, "tiny-sd"), MODEL.removeprefix("store:"))
    proxy = TcpProxy(urlparse(store.client.meta.endpoint_url).port)
    proxy.up()
    empty = tmp_path_factory.mktemp("pull-outage-models")
    st = stack_factory("pull-outage", env={**FAST_RECOVERY, "SDQ_MODELS": MODEL, "SDQ_S3_OUTAGE_LIMIT": "2",
                                           "SDQ_MAX_ATTEMPTS": "20"})  # the outage's give-backs never use them up
    try:
        st.worker("w-pull", "--device", "cpu", "--threads", "1",
                  env={"SDQ_S3_ENDPOINT_URL": proxy.url, "SDQ_MODELS_DIR": str(empty)})
        yield Client(st.env["SDQ_SERVER"]), JobStore(connect(st.env["SDQ_REDIS_URL"])), proxy, empty
    finally:
        st.stop()
        proxy.down()


def _given_back(jobs, job_id: str) -> list:
    """Wait until an item of the job was given back after an error (its `last_error`) or some item
    ended; the item records."""
    def check():
        items = jobs.item_records(job_id, [0, 1])
        return items if any(it.last_error or it.state in ("failed", "succeeded") for it in items) else None

    return wait_until(check, f"an item of job {job_id} given back", 120)


def _body(pipeline: str = "txt2img", **item) -> dict:
    return {"model": MODEL, "pipeline": pipeline, "items": [{"prompt": f"outage {i}", **item} for i in range(2)],
            "params": {"width": 64, "height": 64, "steps": 4, "seed": 5, "cache": False,
                       **({"strength": 0.6} if pipeline == "img2img" else {})}}


@pytest.mark.slow
def test_a_pull_during_an_s3_outage_gives_the_items_back_and_the_job_ends_once_s3_is_back(outage):
    from tests.conftest import wait_job

    client, jobs, proxy, models = outage
    proxy.down()
    try:
        job_id = client.submit(_body())["id"]
        items = _given_back(jobs, job_id)
        assert not any(it.state == "failed" for it in items), items  # not a bad model
        assert any("ModelUnavailable" in (it.last_error or "") for it in items), items
    finally:
        proxy.up()
    doc = wait_job(client, job_id, 180)
    assert doc["state"] == "succeeded", [(it["state"], it["error"]) for it in doc["items"]]
    assert max(it["attempts"] for it in doc["items"]) >= 2, doc["items"]  # made after being given back
    assert (models / "store" / MODEL.removeprefix("store:") / STORE_MANIFEST).is_file()


@pytest.mark.slow
def test_an_init_image_read_during_an_s3_outage_gives_the_item_back(outage):
    """Issue 22: an upload read that fails beyond the outage limit gives the chunk back instead of
    failing the item (an S3 outage never fails a job for good)."""
    from tests.conftest import wait_job
    from tests.test_uploads import image_bytes

    client, jobs, proxy, _ = outage
    warm = wait_job(client, client.submit(_body())["id"], 180)  # pulled and loaded: only the upload read is left
    assert warm["state"] == "succeeded", warm["items"]
    wait_until(lambda: client.job(warm["id"]).get("manifest"), "the warm-up job's manifest", 60)
    key = client.upload(image_bytes("PNG", (64, 64), seed=9), "init.png")["key"]
    proxy.down()
    try:
        job_id = client.submit(_body("img2img", init_image=key))["id"]
        items = _given_back(jobs, job_id)
        assert not any(it.state == "failed" for it in items), items
        assert any(key in (it.last_error or "") for it in items), items  # the upload's read
    finally:
        proxy.up()
    doc = wait_job(client, job_id, 180)
    assert doc["state"] == "succeeded", [(it["state"], it["error"]) for it in doc["items"]]
