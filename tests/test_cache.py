"""The result cache: identical items answered from storage without running a pipeline.

The weights digest tests need only files; the end-to-end tests use the shared stack (real redis,
SeaweedFS, a real CPU worker running the tiny model). The key's unit tests: tests/unit/test_resultcache.py."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from sdq.state.resultindex import ResultIndex
from tests.conftest import FAST, wait_job, wait_until


# -- the weights digest (files only, no services) ---------------------------------------------------
def _folder(root: Path) -> Path:
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text("{}")
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights" * 1000)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text('{"beta_end": 0.012}')
    return root


def test_folder_digest_follows_the_files_and_is_hashed_once(tmp_path):
    from workers.loading.sources import WeightsHasher

    folder = _folder(tmp_path / "model")
    hasher = WeightsHasher(tmp_path / "cache")
    first = hasher.digest(str(folder))
    assert first and first == WeightsHasher(tmp_path / "cache").digest(str(folder))
    # the per-file record on disk is what a new process reads (the big file is not read again)
    records = list((tmp_path / "cache" / "hashes").glob("*.json"))
    assert len(records) == 3
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    for rec_path in records:
        rec = json.loads(rec_path.read_text())
        if rec["path"] == str(weights.resolve()):
            rec_path.write_text(json.dumps({**rec, "sha256": "f" * 64}))
    assert WeightsHasher(tmp_path / "cache").digest(str(folder)) != first  # the record was used, not the file
    # a changed scheduler config (same size, new mtime) is a new model
    time.sleep(0.01)
    (folder / "scheduler" / "scheduler_config.json").write_text('{"beta_end": 0.013}')
    assert hasher.digest(str(folder)) not in (first, None)


def test_single_file_store_and_hub_digests(tmp_path):
    from workers.loading.sources import WeightsHasher

    hasher = WeightsHasher(tmp_path / "cache")
    ckpt = tmp_path / "sd.safetensors"
    ckpt.write_bytes(b"x" * 100)
    alone = hasher.digest(str(ckpt))
    _folder(tmp_path / "sd")  # its local config folder is part of the model
    assert alone and hasher.digest(str(ckpt)) not in (alone, None)
    assert hasher.digest(str(tmp_path / "missing.safetensors")) is None
    # store:NAME uses the manifest's checksums (the local pulled copy's)
    pulled = tmp_path / "cache" / "store" / "mine"
    pulled.mkdir(parents=True)
    manifest = {"name": "mine", "kind": "file", "entry": "m.safetensors",
                "files": [{"path": "m.safetensors", "size": 1, "sha256": "a" * 64}]}
    (pulled / ".sdq-manifest.json").write_text(json.dumps(manifest))
    one = hasher.digest("store:mine")
    manifest["files"][0]["sha256"] = "b" * 64
    (pulled / ".sdq-manifest.json").write_text(json.dumps(manifest))
    assert one and hasher.digest("store:mine") not in (one, None)
    # a hub id: the cached snapshot's commit, or unknown (no caching) when it is not cached
    assert hasher.digest("org/model") is None
    repo = tmp_path / "cache" / "hub" / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    assert hasher.digest("org/model")


def test_builtin_digest_is_the_generated_files(models_dir):
    from workers.loading.sources import WeightsHasher

    a = WeightsHasher(models_dir).digest("builtin:tiny-sd")
    assert a and a == WeightsHasher(models_dir).digest("builtin:tiny-sd")
    assert WeightsHasher(models_dir).digest("builtin:tiny-upscaler") not in (a, None)


# -- end to end on the shared stack ------------------------------------------------------------------
WORKER = "w-main"


@pytest.fixture(scope="module")
def rclient(stack):
    from sdq.state.redisconn import connect

    return connect(stack.env["SDQ_REDIS_URL"])


def _record(rclient) -> dict:
    return json.loads(rclient.get(f"sdq:worker:{WORKER}"))


def _idle_after(rclient, moment: float) -> dict:
    """The worker's record published after `moment` with no chunk in hand (`items_done` settled)."""
    return wait_until(lambda: (r := _record(rclient)) and r["last_seen"] > moment and not r["current_item"] and r,
                      "worker record refreshed", 60)


def _body(tag: str, seeds=(11, 12, 13), **params) -> dict:
    return {"items": [{"prompt": f"cache test {tag} {i}", "seed": s} for i, s in enumerate(seeds)],
            "params": {**FAST, **params}}


def _run(client, body: dict) -> dict:
    doc = wait_job(client, client.submit(body)["id"], timeout=120)
    assert doc["state"] == "succeeded", doc
    return doc


def test_resubmitted_job_is_answered_from_storage_without_a_pipeline_run(client, store, rclient):
    body = _body(uuid.uuid4().hex)
    first = _run(client, body)
    assert not any(it["cached"] for it in first["items"])
    done = _idle_after(rclient, first["finished_at"])["items_done"]

    pubsub = rclient.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("sdq:events:*")
    again = _run(client, body)
    # within a second from submit to the last item recorded
    assert again["finished_at"] - again["created_at"] < 1.0, again
    for old, new in zip(first["items"], again["items"]):
        assert new["cached"] is True and new["cached_from"] == {"job": first["id"], "index": old["index"]}
        assert new["state"] == "succeeded" and new["worker"] == WORKER
        assert (new["device"], new["dtype"]) == ("cpu", "fp32") and new["duration_s"] < 1.0
        assert new["key"] == f"jobs/{again['id']}/{new['index']:05d}.png"
        assert store.get(new["key"]) == store.get(old["key"])  # the same bytes, in the new job's own key
    # no pipeline ran: the worker's count of generated images did not move
    assert _idle_after(rclient, again["finished_at"])["items_done"] == done
    # the events and the manifest say so too
    finished = []
    deadline = time.monotonic() + 10
    while len(finished) < 3 and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=1)
        if msg and msg["channel"].decode().endswith(again["id"]):
            event = json.loads(msg["data"])
            if event["event"] == "item.finished":
                finished.append(event["data"])
    pubsub.close()
    assert len(finished) == 3 and all(e["cached"] is True for e in finished), finished
    wait_until(lambda: client.job(again["id"]).get("manifest"), "manifest written", 60)
    manifest = json.loads(store.get(f"jobs/{again['id']}/manifest.json"))
    assert [it["cached"] for it in manifest["items"]] == [True] * 3


def test_the_thumbnail_is_copied_with_the_image(client, store):
    """Images larger than a thumbnail have one (`workers.running.thumbs`): the cached copy gets its own."""
    body = _body(uuid.uuid4().hex, seeds=(31,), width=320, height=320, steps=2)
    first, again = _run(client, body), _run(client, body)
    new = again["items"][0]
    assert new["cached"] is True
    thumb = f"jobs/{again['id']}/thumbs/00000.webp"
    assert store.get(thumb) == store.get(f"jobs/{first['id']}/thumbs/00000.webp")
    assert new["thumb_url"] and new["thumb_url"] != new["url"]


def test_a_changed_item_runs_again_and_the_rest_is_cached(client, rclient):
    tag = uuid.uuid4().hex
    first = _run(client, _body(tag))
    done = _idle_after(rclient, first["finished_at"])["items_done"]
    again = _run(client, _body(tag, seeds=(11, 99, 13)))
    assert [bool(it["cached"]) for it in again["items"]] == [True, False, True]
    assert _idle_after(rclient, again["finished_at"])["items_done"] == done + 1
    steps = _run(client, _body(tag, steps=3))  # one job-wide parameter: everything runs
    assert not any(it["cached"] for it in steps["items"])


def test_cache_false_runs_fresh_and_records_nothing(client, rclient):
    tag = uuid.uuid4().hex
    first = _run(client, _body(tag))
    done = _idle_after(rclient, first["finished_at"])["items_done"]
    fresh = _run(client, _body(tag, cache=False))
    assert not any(it["cached"] for it in fresh["items"])
    assert _idle_after(rclient, fresh["finished_at"])["items_done"] == done + 3
    # an opted-out job's results are not recorded: the same items opted in later run too
    other = uuid.uuid4().hex
    _run(client, _body(other, cache=False))
    assert not any(it["cached"] for it in _run(client, _body(other))["items"])


def test_an_entry_whose_object_was_deleted_runs_the_item(client, store, rclient):
    tag = uuid.uuid4().hex
    first = _run(client, _body(tag, seeds=(21, 22)))
    store.client.delete_object(Bucket=store.bucket, Key=first["items"][0]["key"])
    again = _run(client, _body(tag, seeds=(21, 22)))
    assert [bool(it["cached"]) for it in again["items"]] == [False, True]
    assert store.size(again["items"][0]["key"])
    # the fresh result took the stale entry's place
    third = _run(client, _body(tag, seeds=(21, 22)))
    assert third["items"][0]["cached_from"] == {"job": again["id"], "index": 0}


def test_sdq_cache_clear_drops_every_entry(stack, rclient):
    import os
    import subprocess
    import sys

    ResultIndex(rclient).register("0" * 64, {"job": "j", "index": 0, "key": "jobs/j/00000.png"})
    env = {**os.environ, "SDQ_REDIS_URL": stack.env["SDQ_REDIS_URL"]}

    def cache(*args: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "cli", "cache", *args, "--json"], env=env, check=True,
                             capture_output=True, text=True, timeout=60).stdout
        return json.loads(out)

    before = cache("count")["entries"]
    assert before >= 1
    assert cache("clear") == {"cleared": before}
    assert cache("count") == {"entries": 0} and ResultIndex(rclient).lookup(["0" * 64]) == [None]


def test_init_images_are_keyed_by_their_content(client):
    from tests.test_uploads import image_bytes

    tag = uuid.uuid4().hex
    data = image_bytes("PNG", (64, 64), seed=3)
    a, b = (client.upload(data, f"{n}.png")["key"] for n in "ab")
    c = client.upload(image_bytes("PNG", (64, 64), seed=4), "c.png")["key"]
    assert len({a, b, c}) == 3

    def body(key: str) -> dict:
        return {"pipeline": "img2img", "items": [{"prompt": f"cache img {tag}", "seed": 5, "init_image": key}],
                "params": {**FAST, "strength": 0.5}}

    assert not _run(client, body(a))["items"][0]["cached"]
    assert _run(client, body(b))["items"][0]["cached"] is True  # another upload of the same bytes
    assert not _run(client, body(c))["items"][0]["cached"]  # other bytes


@pytest.mark.slow
def test_a_cold_worker_answers_a_cached_job_without_loading_the_model(stack_factory):
    """The lookup runs before the model is loaded: a worker that never loaded it serves the whole job."""
    from cli.client import Client
    from sdq.state.redisconn import connect

    st = stack_factory("cache-cold")
    try:
        client, r = Client(st.env["SDQ_SERVER"]), connect(st.env["SDQ_REDIS_URL"])
        warm = st.worker("w-made-it", "--device", "cpu", "--threads", "1")
        body = _body(uuid.uuid4().hex)
        first = _run(client, body)
        warm.stop()
        st.worker("w-cold", "--device", "cpu", "--threads", "1")
        again = _run(client, body)
        assert [(it["cached"], it["worker"]) for it in again["items"]] == [(True, "w-cold")] * 3
        assert [it["cached_from"]["job"] for it in again["items"]] == [first["id"]] * 3
        record = wait_until(lambda: (rec := json.loads(r.get("sdq:worker:w-cold") or "null")) and
                            rec["last_seen"] > again["finished_at"] and not rec["current_item"] and rec,
                            "w-cold's record refreshed", 60)
        assert record["loaded_models"] == [] and record["items_done"] == 0
    finally:
        st.stop()


@pytest.mark.slow
def test_a_model_changed_on_disk_under_a_loaded_pipeline_keys_by_the_loaded_weights(stack_factory, store, models_dir,
                                                                                    tmp_path):
    """Issue 22: the key holds the digest recorded when the pipeline was loaded, not what the files say
    at lookup. A folder model updated in place while a worker holds the old weights: that worker's
    lookups and results stay under the old digest, so a worker that loads the new files never gets an
    old-weight image from the cache."""
    import io
    import shutil

    import numpy as np
    from PIL import Image

    from cli.client import Client
    from sdq.sources import builtin_path

    folder = tmp_path / "inplace-sd"
    shutil.copytree(builtin_path(models_dir, "tiny-sd"), folder)
    st = stack_factory("cache-inplace", env={"SDQ_MODELS": str(folder)})
    try:
        client = Client(st.env["SDQ_SERVER"])
        old = st.worker("w-old-weights", "--device", "cpu", "--threads", "1", "--preload", str(folder))
        tag = uuid.uuid4().hex
        first = _run(client, {**_body(tag, seeds=(11,)), "model": str(folder)})
        assert not first["items"][0]["cached"]
        # 1. The model changes on disk (another scheduler config: other images); the worker keeps the old one loaded.
        config = folder / "scheduler" / "scheduler_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "beta_end": 0.02}))
        # 2. Its lookups use the loaded weights' digest: what it made before is what it would make now.
        assert _run(client, {**_body(tag, seeds=(11,)), "model": str(folder)})["items"][0]["cached"] is True
        # 3. What it makes now is made with the old weights, and filed under their digest.
        made_old = _run(client, {**_body(tag, seeds=(12,)), "model": str(folder)})
        assert not made_old["items"][0]["cached"]
        old.stop()
        # 4. A worker that loads the new files misses: it makes the item afresh, and the image differs.
        st.worker("w-new-weights", "--device", "cpu", "--threads", "1")
        made_new = _run(client, {**_body(tag, seeds=(12,)), "model": str(folder)})
        assert not made_new["items"][0]["cached"], made_new["items"][0]["cached_from"]

        def pixels(doc: dict) -> np.ndarray:
            return np.asarray(Image.open(io.BytesIO(store.get(doc["items"][0]["key"]))).convert("RGB")).astype(int)

        assert np.abs(pixels(made_new) - pixels(made_old)).max() > 0  # the old-weight image was not for the new files
    finally:
        st.stop()
