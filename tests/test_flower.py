"""Flower, Celery's monitoring UI, sees the fleet: the workers and the tasks they ran."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import pytest
import requests

from cli.services import Service, free_port, wait_for
from tests.conftest import FAST, wait_job

pytestmark = pytest.mark.skipif(importlib.util.find_spec("flower") is None, reason="flower not installed")


@pytest.fixture
def flower(stack, tmp_path):
    port = free_port()
    log = open(tmp_path / "flower.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "--broker", stack.env["SDQ_REDIS_URL"], "flower",
                             "--address=127.0.0.1", f"--port={port}"],
                            env={**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}, stdout=log,
                            stderr=subprocess.STDOUT)
    svc = Service("flower", proc, log)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: requests.get(url + "/healthcheck", timeout=2).ok, "flower", 60, proc)
    yield url
    svc.stop()


def test_flower_lists_the_workers_and_their_tasks(flower, client):
    workers = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(name.startswith("w-main@") for name in workers):
        workers = requests.get(flower + "/api/workers", params={"refresh": "1"}, timeout=30).json()
        time.sleep(0.5)
    assert any(name.startswith("w-main@") for name in workers), workers
    job_id = client.submit({"prompts": ["seen by flower"], "params": FAST})["id"]
    assert wait_job(client, job_id)["state"] == "succeeded"
    tasks = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(t.get("name") == "sdq.generate" and job_id in str(t.get("kwargs"))
                                                  for t in tasks.values()):
        tasks = requests.get(flower + "/api/tasks", timeout=30).json()
        time.sleep(0.5)
    ours = [t for t in tasks.values() if t.get("name") == "sdq.generate" and job_id in str(t.get("kwargs"))]
    assert ours and ours[0]["state"] == "SUCCESS" and ours[0]["worker"].startswith("w-main@"), ours
