"""Tenants: token parsing, isolation between two tokens, per-tenant queue cap, no cross-tenant leaks.

The API tests run on a private producer + Redis with four tokens and no worker, so jobs stay queued.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis
import requests

from cli.services import free_port
from sdq.records import WorkerRecord
from sdq.config import Settings
from sdq.exceptions import ConfigError
from sdq.state import fleet

TOKENS = {"alice": "tok-alice-7f3a", "bob": "tok-bob-19c2", "carol": "tok-carol-8d1e", "dave": "tok-dave-55b0"}
MASTER = "operator-master-secret"
QUEUE_CAP = 6
SMALL = {"width": 64, "height": 64, "steps": 2}


# -- tokens --------------------------------------------------------------------------------------

@pytest.mark.parametrize("entries", [
    "alice:",                        # the empty token, which a request without Authorization matched
    "tok-without-owner",             # became the tenant named by its first 8 characters
    ":tok-no-owner",
    "alice:tok-a,bob:tok-a",         # one token, two tenants
    "al ice:tok-a",
    "alice:tok a",
])
@pytest.mark.unit
def test_malformed_token_entries_are_refused(entries):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"SDQ_API_TOKENS": entries})
    assert "SDQ_API_TOKENS" in str(err.value)


@pytest.mark.unit
def test_tokens_sharing_a_prefix_are_two_tenants():
    tokens = Settings.from_env({"SDQ_API_TOKENS": "ann:shared-prefix-1,ben:shared-prefix-2"}).api_tokens
    assert tokens == {"shared-prefix-1": "ann", "shared-prefix-2": "ben"}


@pytest.mark.unit
def test_tokens_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# operator tokens\nalice:tok-from-file-a\n\nbob:tok-from-file-b  # rotated 2026-11\n")
    env = {"SDQ_API_TOKENS_FILE": str(path), "SDQ_API_TOKENS": "carol:tok-env-c"}
    assert Settings.from_env(env).api_tokens == {"tok-from-file-a": "alice", "tok-from-file-b": "bob",
                                                 "tok-env-c": "carol"}
    path.write_text("alice:\n")
    with pytest.raises(ConfigError, match="SDQ_API_TOKENS_FILE"):
        Settings.from_env({"SDQ_API_TOKENS_FILE": str(path)})
    with pytest.raises(ConfigError, match="cannot be read"):
        Settings.from_env({"SDQ_API_TOKENS_FILE": str(tmp_path / "missing")})


def test_producer_with_a_malformed_token_stops_at_start_with_a_clear_message():
    env = {**os.environ, "SDQ_API_TOKENS": "alice:tok-alice-1,bob:"}
    proc = subprocess.run([sys.executable, "-m", "cli", "producer", "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "SDQ_API_TOKENS" in proc.stderr and "bob" in proc.stderr, proc.stderr[-2000:]


# -- isolation on a running producer --------------------------------------------------------------

@pytest.fixture(scope="module")
def api(stack_factory):
    tokens = ",".join(f"{owner}:{tok}" for owner, tok in TOKENS.items())
    return stack_factory("tenants", env={"SDQ_API_TOKENS": tokens, "SDQ_MAX_QUEUED_ITEMS": str(QUEUE_CAP),
                                         "SDQ_WEBHOOK_SECRET": MASTER})


def call(api, owner: str, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {TOKENS[owner]}"}
    return requests.request(method, api.env["SDQ_SERVER"] + path, headers=headers, timeout=30, **kwargs)


def test_one_tenant_cannot_reach_anything_of_another(api):
    from tests.test_uploads import image_bytes

    job = call(api, "alice", "POST", "/v1/jobs", json={"prompts": ["mine"], "params": SMALL}).json()["id"]
    key = call(api, "alice", "POST", "/v1/uploads", files={"file": ("a.png", image_bytes("PNG"))}).json()["key"]
    name = key.removeprefix("uploads/")
    assert call(api, "alice", "GET", f"/v1/jobs/{job}").ok
    assert call(api, "alice", "GET", f"/v1/uploads/{name}").json()["key"] == key
    for method, path in [("GET", f"/v1/jobs/{job}"), ("GET", f"/v1/jobs/{job}?offset=0&limit=1"),
                         ("GET", f"/v1/jobs/{job}/events"), ("DELETE", f"/v1/jobs/{job}"),
                         ("POST", f"/v1/jobs/{job}/retry"), ("GET", f"/v1/uploads/{name}")]:
        resp = call(api, "bob", method, path)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", (method, path, resp.text)
    assert job not in [j["id"] for j in call(api, "bob", "GET", "/v1/jobs").json()["jobs"]]
    borrowed = call(api, "bob", "POST", "/v1/jobs", json={"prompts": ["theirs"], "pipeline": "img2img",
                                                          "params": {**SMALL, "init_image": key}})
    assert borrowed.status_code == 422 and borrowed.json()["error"]["field"] == "params.init_image"
    assert call(api, "alice", "GET", f"/v1/jobs/{job}").json()["state"] == "queued"  # bob's cancel did nothing


def test_queued_items_are_capped_per_tenant_with_429_and_retry_after(api):
    body = {"prompts": ["a", "b", "c", "d"], "params": SMALL}
    assert call(api, "carol", "POST", "/v1/jobs", json=body).status_code == 202
    resp = call(api, "carol", "POST", "/v1/jobs", json=body)
    assert resp.status_code == 429, resp.text
    assert int(resp.headers["Retry-After"]) > 0 and resp.json()["error"]["field"] == "items"
    assert call(api, "dave", "POST", "/v1/jobs", json=body).status_code == 202  # other tenants are not held up
    assert call(api, "carol", "POST", "/v1/jobs", json={**body, "prompts": ["e", "f"]}).status_code == 202


def test_a_retry_is_capped_like_a_submit(api):
    """Issue 39 defect 3: submit, cancel, submit again, then retry the first job: past the cap is a 429."""
    body = {"prompts": ["a", "b", "c", "d"], "params": SMALL}
    first = call(api, "bob", "POST", "/v1/jobs", json=body).json()["id"]
    assert call(api, "bob", "DELETE", f"/v1/jobs/{first}").status_code == 202
    second = call(api, "bob", "POST", "/v1/jobs", json=body).json()["id"]  # 4 queued, the cap is 6
    resp = call(api, "bob", "POST", f"/v1/jobs/{first}/retry")
    assert resp.status_code == 429, resp.text
    assert int(resp.headers["Retry-After"]) > 0 and resp.json()["error"]["field"] == "items"
    doc = call(api, "bob", "GET", f"/v1/jobs/{first}").json()
    assert doc["state"] == "cancelled" and doc["counts"]["queued"] == 0  # nothing re-queued
    assert call(api, "bob", "DELETE", f"/v1/jobs/{second}").status_code == 202
    resp = call(api, "bob", "POST", f"/v1/jobs/{first}/retry")
    assert resp.status_code == 202 and resp.json()["requeued"] == 4, resp.text
    assert call(api, "bob", "DELETE", f"/v1/jobs/{first}").status_code == 202  # leaves bob's queue empty


def test_workers_list_does_not_name_other_tenants_jobs(api):
    job = call(api, "alice", "POST", "/v1/jobs", json={"prompts": ["busy"], "params": SMALL}).json()["id"]
    client = redis.Redis.from_url(api.env["SDQ_REDIS_URL"])
    fleet.publish(client, WorkerRecord(name="w-fake", device="cpu", dtype="fp32", queues=[],
                                       current_item={"job": job, "items": [0]}), ttl=60)
    try:
        seen_by_alice = call(api, "alice", "GET", "/v1/workers").json()["workers"]
        seen_by_bob = call(api, "bob", "GET", "/v1/workers").json()["workers"]
    finally:
        fleet.remove(client, "w-fake")
    assert seen_by_alice[0]["current_item"]["job"] == job
    assert job not in str(seen_by_bob) and seen_by_bob[0]["current_item"] == {"busy": True}


def test_each_tenant_gets_its_own_webhook_secret(api):
    from sdq.webhooks import tenant_secret

    alice = call(api, "alice", "GET", "/v1/webhook-secret").json()["secret"]
    bob = call(api, "bob", "GET", "/v1/webhook-secret").json()["secret"]
    assert alice == tenant_secret(MASTER, "alice") and bob == tenant_secret(MASTER, "bob") and alice != bob
    assert MASTER not in alice + bob
    assert requests.get(api.env["SDQ_SERVER"] + "/v1/webhook-secret", timeout=10).status_code == 401


def test_listing_jobs_costs_a_page_not_the_queue(api):
    """GET /v1/jobs?limit=3 with 30 unfinished jobs: a few Redis commands, not one per (listed x active) job."""
    for i in range(30):
        resp = call(api, "dave" if i % 2 else "bob", "POST", "/v1/jobs", json={"prompts": [f"p{i}"], "params": SMALL,
                                                                               "priority": i % 10})
        assert resp.status_code in (202, 429)
    client = redis.Redis.from_url(api.env["SDQ_REDIS_URL"])

    def calls() -> int:
        return sum(v["calls"] for k, v in client.info("commandstats").items() if k != "cmdstat_info")

    before = calls()
    resp = call(api, "bob", "GET", "/v1/jobs?limit=3")
    used = calls() - before
    assert resp.ok and len(resp.json()["jobs"]) == 3
    assert used <= 12, f"{used} Redis commands for a page of 3 jobs"


def test_missing_or_unknown_token_is_401_json(api):
    base = api.env["SDQ_SERVER"]
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer tok-alice"},
                    {"Authorization": f"Basic {TOKENS['alice']}"}, {"Authorization": "Bearer \u00e9t\u00e9"}):
        resp = requests.get(base + "/v1/jobs", headers=headers, timeout=10)
        assert resp.status_code == 401 and resp.json()["error"]["field"] == "Authorization", headers


# -- the queued-items cap holds however many jobs are unfinished ---------------------------------

CROWDED_CAP = 1500


@pytest.fixture(scope="module")
def crowded(stack_factory):
    """No worker, a cap of 1500 queued items per tenant, and 1001 older unfinished jobs of another tenant."""
    from sdq.records import Item, Job
    from sdq.state.store import JobStore

    tokens = ",".join(f"{owner}:{tok}" for owner, tok in TOKENS.items())
    st = stack_factory("tenants-crowded", env={"SDQ_API_TOKENS": tokens, "SDQ_MAX_QUEUED_ITEMS": str(CROWDED_CAP)})
    jobs = JobStore(redis.Redis.from_url(st.env["SDQ_REDIS_URL"]))
    for n in range(1001):
        jobs.create(Job(id=f"parked{n:05d}", owner="dave", state="queued", created_at=1_000_000.0 + n, model="m",
                        pipeline="txt2img", seed=n, n_items=1),
                    [Item(index=0, prompt="parked", seed=n, state="queued", steps=2)])
    return st


def test_queued_items_cap_holds_behind_a_thousand_unfinished_jobs(crowded):
    """1001 older unfinished jobs of another tenant do not hide carol's items from her cap (the old
    count read only the first 1000 active jobs); cancelling gives her room back at once."""
    body = {"prompts": [f"p{i}" for i in range(500)], "params": SMALL}
    accepted = []
    for _ in range(3):
        resp = call(crowded, "carol", "POST", "/v1/jobs", json=body)
        assert resp.status_code == 202, resp.text
        accepted.append(resp.json()["id"])
    over = call(crowded, "carol", "POST", "/v1/jobs", json={**body, "prompts": ["one more"]})
    assert over.status_code == 429 and over.json()["error"]["field"] == "items", over.text
    assert int(over.headers["Retry-After"]) > 0
    assert call(crowded, "dave", "POST", "/v1/jobs", json=body).status_code == 429  # dave: 1001 + 500 > 1500
    assert call(crowded, "alice", "POST", "/v1/jobs", json=body).status_code == 202  # others have their own
    assert call(crowded, "carol", "DELETE", f"/v1/jobs/{accepted[0]}").status_code in (200, 202)
    assert call(crowded, "carol", "POST", "/v1/jobs", json=body).status_code == 202
    assert call(crowded, "carol", "POST", "/v1/jobs", json={**body, "prompts": ["one more"]}).status_code == 429
