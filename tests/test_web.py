"""Server side of the web page: thumbnails next to each image, the zip download, queue depths."""
from __future__ import annotations

import io
import json
import time
import zipfile

import pytest
import requests
from PIL import Image

from cli.client import Client
from tests.conftest import FAST, wait_job
from workers.running.thumbs import THUMB_SIDE, encode_thumb, store_thumb, thumb_key

TOKENS = {"alice": "web-alice-token", "bob": "web-bob-token"}


def test_thumbnail_fits_the_box_and_keeps_aspect():
    img = Image.new("RGB", (512, 256), (10, 200, 30))
    thumb = Image.open(io.BytesIO(encode_thumb(img)))
    assert thumb.format == "WEBP" and thumb.size == (THUMB_SIDE, THUMB_SIDE // 2)
    small = Image.open(io.BytesIO(encode_thumb(Image.new("RGB", (64, 64)))))
    assert small.size == (64, 64)  # never scaled up


def test_a_failed_thumbnail_is_reported_not_raised(store):
    assert store_thumb(store, "job1", 0, object()) == {}  # not an image: logged, never raised


def test_each_result_larger_than_a_thumbnail_has_one_in_the_bucket(client, store):
    params = {**FAST, "width": 320, "height": 192, "seed": 4}
    job_id = client.submit({"prompts": ["thumb one", "thumb two"], "params": params})["id"]
    doc = wait_job(client, job_id)
    assert doc["state"] == "succeeded"
    assert store.keys(f"jobs/{job_id}/thumbs/") == [thumb_key(job_id, 0), thumb_key(job_id, 1)]
    for it in doc["items"]:
        assert it["thumb_url"] and "/thumbs/" in it["thumb_url"]
        thumb = Image.open(io.BytesIO(requests.get(it["thumb_url"], timeout=10).content))
        assert thumb.format == "WEBP" and thumb.size[0] == THUMB_SIDE and 150 <= thumb.size[1] <= 156


def test_a_result_that_fits_a_thumbnail_is_its_own(client, store):
    job_id = client.submit({"prompts": ["small one"], "params": {**FAST, "seed": 5}})["id"]
    doc = wait_job(client, job_id)
    assert doc["state"] == "succeeded" and store.keys(f"jobs/{job_id}/thumbs/") == []
    assert doc["items"][0]["thumb_url"] == doc["items"][0]["url"]


def test_download_zip_holds_the_pngs_and_manifest(client, store):
    job_id = client.submit({"prompts": ["zip a", "zip b", "zip c"], "params": {**FAST, "seed": 9}})["id"]
    doc = wait_job(client, job_id)
    assert doc["state"] == "succeeded"
    deadline = time.monotonic() + 60  # the worker writes the manifest just after the job ends
    while client.job(job_id, limit=0)["manifest"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    resp = requests.get(f"{client.server}/v1/jobs/{job_id}/download.zip", timeout=60)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/zip"
    assert f"sdq-{job_id}.zip" in resp.headers["Content-Disposition"]
    zf = zipfile.ZipFile(io.BytesIO(resp.content))
    assert zf.testzip() is None
    names = zf.namelist()
    assert names == [f"{job_id}/{i:05d}.png" for i in range(3)] + [f"{job_id}/manifest.json"]
    for i, it in enumerate(doc["items"]):
        assert zf.read(names[i]) == store.get(it["key"])
    manifest = json.loads(zf.read(f"{job_id}/manifest.json"))
    assert [it["seed"] for it in manifest["items"]] == [9, 10, 11]


def test_download_zip_of_an_unknown_job_is_404(client):
    resp = requests.get(f"{client.server}/v1/jobs/nosuchjob/download.zip", timeout=10)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


@pytest.fixture(scope="module")
def tenants(stack_factory):
    """A producer + Redis with two tenants and no workers: jobs stay queued."""
    st = stack_factory("web-tenants", env={"SDQ_API_TOKENS": ",".join(f"{o}:{t}" for o, t in TOKENS.items())})
    return st.env["SDQ_SERVER"]


def test_download_zip_is_only_for_the_jobs_owner(tenants):
    alice = Client(tenants, TOKENS["alice"])
    job_id = alice.submit({"prompts": ["alice's"], "params": FAST})["id"]
    url = f"{tenants}/v1/jobs/{job_id}/download.zip"
    assert requests.get(url, timeout=10).status_code == 401
    other = requests.get(url, headers={"Authorization": f"Bearer {TOKENS['bob']}"}, timeout=10)
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    own = requests.get(url, headers={"Authorization": f"Bearer {TOKENS['alice']}"}, timeout=10)
    assert own.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(own.content)).namelist() == []  # nothing stored yet


def test_queue_depths_endpoint(client):
    doc = requests.get(f"{client.server}/v1/queues", timeout=10).json()
    names = {q["name"] for q in doc["queues"]}
    assert "sdq.cpu.any.p256" in names
    assert all(isinstance(q["messages"], int) and q["messages"] >= 0 for q in doc["queues"])


def test_the_page_and_its_files_are_served_with_a_strict_policy(client):
    resp = requests.get(client.server + "/", timeout=10)
    assert resp.status_code == 200 and "<label for=\"prompts\">Prompts</label>" in resp.text
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    for name in ("api.js", "ui.js", "submit.js", "extras.js", "pages.js", "app.js", "app.css"):
        assert f"/static/{name}" in resp.text
        assert requests.get(f"{client.server}/static/{name}", timeout=10).status_code == 200
