"""The item record: one declaration, three documents (task message, status view, manifest)."""
from __future__ import annotations

from sdq import records

STORED = {"index": 3, "prompt": "a cat", "negative_prompt": "", "seed": 7, "init_image": None, "gen": 2,
          "params": {"steps": 4}, "state": "succeeded", "worker": "w1", "key": "jobs/j/00003.png",
          "thumb_key": "jobs/j/thumbs/00003.webp", "tries": 1, "backup": {"worker": "w2"}}


def test_the_task_message_carries_what_a_worker_needs_and_no_results():
    msg = records.project(STORED, records.MESSAGE)
    assert msg == {"index": 3, "prompt": "a cat", "negative_prompt": "", "seed": 7, "init_image": None, "gen": 2,
                   "cache": None}
    assert records.project({"index": 0, "prompt": "x"}, records.MESSAGE)["gen"] == 0  # first attempt


def test_status_and_manifest_show_results_but_no_internal_bookkeeping():
    status, manifest = records.project(STORED, records.STATUS), records.project(STORED, records.MANIFEST)
    for doc in (status, manifest):
        assert doc["state"] == "succeeded" and doc["key"] == "jobs/j/00003.png" and doc["params"] == {"steps": 4}
        assert not {"gen", "tries", "backup", "thumb_key"} & set(doc)
    assert set(manifest) < set(status)  # the manifest is the reproducible subset
    assert {"url", "bytes", "started_at", "oom_workers"} <= set(status) - set(manifest)


def test_the_webhook_body_summarises_the_job_without_its_parameters():
    job = {"id": "j", "state": "succeeded", "n_items": 2, "counts": {"succeeded": 2}, "params": {"steps": 4},
           "owner": "alice", "manifest_key": "jobs/j/manifest.json"}
    body = records.project(job, records.WEBHOOK, records.Job)
    assert body["id"] == "j" and body["counts"] == {"succeeded": 2} and body["manifest_key"] == "jobs/j/manifest.json"
    assert "params" not in body and "owner" not in body
    assert "owner" not in records.project(job, records.STATUS, records.Job)  # tenants never see each other's names
