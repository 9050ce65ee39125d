"""Draining a worker (scale-in, deploys): SIGTERM lets it finish the chunk it holds; nothing is lost."""
from __future__ import annotations

import signal

import pytest

from cli.client import Client
from tests.conftest import wait_job, wait_until

ITEM = {"width": 128, "height": 128, "steps": 60}



@pytest.mark.slow
def test_sigterm_finishes_the_current_chunk_and_loses_nothing(stack_factory):
    st = stack_factory("drain")
    first = st.worker("w-drain-1", "--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd")
    client = Client(st.env["SDQ_SERVER"])
    job_id = client.submit({"items": [{"prompt": f"drain {i}"} for i in range(3)], "params": {**ITEM, "seed": 4}})["id"]
    running = wait_until(lambda: [it for it in client.job(job_id)["items"] if it["state"] == "running"], "an item running")
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(120)
    doc = client.job(job_id)
    held = next(it for it in doc["items"] if it["index"] == running[0]["index"])
    assert held["state"] == "succeeded" and held["worker"] == "w-drain-1", held  # finished before exiting
    assert not [it for it in doc["items"] if it["state"] in ("running", "failed")], doc["counts"]
    assert doc["counts"]["queued"] >= 1  # the rest waits for the next worker
    st.worker("w-drain-2", "--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd")
    doc = wait_job(client, job_id)
    assert doc["state"] == "succeeded"
    assert all(it["attempts"] == 1 for it in doc["items"]), [it["attempts"] for it in doc["items"]]
