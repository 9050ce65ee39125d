"""`"dry_run": true` on POST /v1/jobs: a quote from the real fleet, and nothing created."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import wait_until

CAP = 6
"""The tenant's queued-items cap on this stack."""


@pytest.fixture(scope="module")
def api(stack_factory):
    """A stack with one tenant capped at CAP queued items and one CPU worker that may load tiny-sd only,
    at most 256x256."""
    st = stack_factory("dry-run", env={"SDQ_API_TOKENS": "ann:tok-ann", "SDQ_MAX_QUEUED_ITEMS": str(CAP)})
    st.worker("w-dry", "--device", "cpu", "--threads", "1", "--models", "builtin:tiny-sd", "--max-pixels", "65536")
    return st.env["SDQ_SERVER"]


def post(api: str, body: dict) -> requests.Response:
    return requests.post(f"{api}/v1/jobs", json=body, headers={"Authorization": "Bearer tok-ann"}, timeout=30)


def listed(api: str) -> int:
    out = requests.get(f"{api}/v1/jobs", headers={"Authorization": "Bearer tok-ann"}, timeout=30)
    return out.json()["total"]


def body(n: int = 3, **extra) -> dict:
    return {"prompts": [f"a red cube, take {i}" for i in range(n)], "model": "builtin:tiny-sd",
            "params": {"steps": 4, "width": 64, "height": 64}, "dry_run": True, **extra}


def test_a_quote_has_seconds_and_able_workers_and_creates_nothing(api):
    before = listed(api)
    resp = post(api, body())
    assert resp.status_code == 200, resp.text
    quote = resp.json()
    assert quote["dry_run"] is True and quote["accepted"] is True and quote["items"] == 3
    assert quote["runnable_now"] is True
    [queue] = quote["queues"]
    assert [w["name"] for w in queue["able_workers"]] == ["w-dry"]
    assert queue["able_workers"][0]["seconds_per_item"] > 0
    assert queue["items"] == 3 and queue["work_mpx_steps"] > 0
    assert queue["start_in_s"] >= 0 and queue["finish_in_s"] > queue["start_in_s"]
    assert quote["expected_finish"] >= time.time()
    assert listed(api) == before  # no job recorded
    # and a real submit of the same body without dry_run is accepted and runs
    real = post(api, body(dry_run=False))
    assert real.status_code == 202 and listed(api) == before + 1


def test_a_job_no_live_worker_can_take_says_so_and_why(api):
    gpu = post(api, body(requires={"device": "gpu"}))
    assert gpu.status_code == 200, gpu.text
    quote = gpu.json()
    assert quote["runnable_now"] is False and quote["finish_in_s"] is None
    [queue] = quote["queues"]
    assert queue["able_workers"] == []
    [unable] = queue["unable_workers"]
    assert unable["name"] == "w-dry" and any(r.startswith("device:") for r in unable["reasons"])
    assert quote["warnings"]  # the same warning a real submit would carry

    big = post(api, body(params={"steps": 4, "width": 512, "height": 512})).json()
    assert any(r.startswith("pixels:") for r in big["queues"][0]["unable_workers"][0]["reasons"])
    other = post(api, body(model="builtin:tiny-sdxl", params={"steps": 2, "width": 64, "height": 64})).json()
    assert any(r.startswith("model:") for r in other["queues"][0]["unable_workers"][0]["reasons"])


def test_a_tenant_over_its_cap_hears_it_in_the_dry_run(api):
    wait_until(lambda: post(api, body(n=CAP)).json()["accepted"], "room for CAP items (earlier tests' jobs run)", 180)
    over = post(api, body(n=CAP + 1))
    assert over.status_code == 200
    quote = over.json()
    assert quote["accepted"] is False
    assert [r["code"] for r in quote["refusals"]] == ["too_many_requests"]
    assert str(CAP) in quote["refusals"][0]["message"]
    assert post(api, body(n=CAP + 1, dry_run=False)).status_code == 429  # what the real submit meets


def test_bad_input_in_a_dry_run_is_the_submits_4xx(api):
    resp = post(api, body(params={"steps": 4, "width": 64, "height": 63}))
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "params.height"


def test_sdq_submit_dry_run_prints_the_quote_and_submits_nothing(api, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a blue sphere\na green cone\n")
    before = listed(api)
    env = {**os.environ, "SDQ_TOKEN": "tok-ann"}
    out = subprocess.run([sys.executable, "-m", "cli", "--server", api, "submit", str(prompts), "--dry-run",
                          "--steps", "2", "--width", "64", "--height", "64", "--device", "gpu"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "dry run: 2 items" in out.stdout and "not on w-dry: device:" in out.stdout
    assert "no live worker can take" in out.stdout
    assert listed(api) == before
