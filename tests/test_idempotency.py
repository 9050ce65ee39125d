"""Idempotent submits (issue 39 defect 9): an `Idempotency-Key` makes a request sent again within a day
answer its first job, never a second one, per tenant; the key is recorded with the job, in one
transaction. Runs on the tenants' stack (four tokens, no worker: jobs stay queued)."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from producer.planning.jobs import plan_job
from producer.schemas import parse_submit
from sdq.config import Settings
from sdq.state import idempotency
from sdq.state.store import JobStore
from tests.test_tenants import SMALL, TOKENS

BODY = {"prompts": ["once"], "params": SMALL}


@pytest.fixture(scope="module")
def api(stack_factory):
    return stack_factory("idempotency", env={"SDQ_API_TOKENS": ",".join(f"{o}:{t}" for o, t in TOKENS.items())})


def call(api, owner: str, method: str, path: str, headers: dict[str, str] | None = None, **kwargs):
    headers = {"Authorization": f"Bearer {TOKENS[owner]}", **(headers or {})}
    return requests.request(method, api.env["SDQ_SERVER"] + path, headers=headers, timeout=30, **kwargs)


def post(api, owner: str, key: str, body: dict = BODY):
    return call(api, owner, "POST", "/v1/jobs", headers={idempotency.HEADER: key}, json=body)


def jobs_of(api, owner: str) -> list[str]:
    return [j["id"] for j in call(api, owner, "GET", "/v1/jobs?limit=100").json()["jobs"]]


def test_the_same_key_answers_the_first_job_per_tenant(api):
    key = uuid.uuid4().hex
    first = post(api, "alice", key)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers, first.text
    again = post(api, "alice", key, {"params": SMALL, "prompts": ["once"]})  # same body, other key order
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and again.json()["items"] == 1
    assert jobs_of(api, "alice").count(first.json()["id"]) == 1
    other = post(api, "bob", key)  # another tenant's key is its own
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    assert call(api, "alice", "POST", "/v1/jobs", json=BODY).json()["id"] != first.json()["id"]  # no key: new job
    for owner, job in (("alice", first), ("bob", other)):
        call(api, owner, "DELETE", f"/v1/jobs/{job.json()['id']}")


def test_the_same_key_with_another_body_is_a_422(api):
    key = uuid.uuid4().hex
    first = post(api, "dave", key).json()["id"]
    resp = post(api, "dave", key, {**BODY, "prompts": ["another"]})
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["field"] == "Idempotency-Key" and err["code"] == "idempotency_key_reused" and first in err["message"]
    for bad in ("", "x" * 256, "caf\u00e9"):
        resp = post(api, "dave", bad)
        assert resp.status_code == 422 and resp.json()["error"]["field"] == "Idempotency-Key", (bad, resp.text)
    call(api, "dave", "DELETE", f"/v1/jobs/{first}")


def test_concurrent_requests_under_one_key_make_one_job(api):
    key, before = uuid.uuid4().hex, set(jobs_of(api, "carol"))
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(api, "carol", key), range(8)))
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1 and set(jobs_of(api, "carol")) - before == ids
    call(api, "carol", "DELETE", f"/v1/jobs/{ids.pop()}")


def test_a_job_recorded_before_the_answer_was_lost_is_answered_again(api):
    """The producer recorded the job with its key, then died (or answered 503): the client's retry gets it."""
    key = uuid.uuid4().hex
    settings = Settings.from_env(api.env)
    plan = plan_job(parse_submit(BODY), settings, "alice")
    jobs = JobStore(redis.Redis.from_url(api.env["SDQ_REDIS_URL"]))
    jobs.create(plan.job, plan.items, once=idempotency.once("alice", "v1", key, BODY))  # submit's Redis step
    resp = post(api, "alice", key)
    assert resp.status_code == 202 and resp.json()["id"] == plan.job.id, resp.text
    assert jobs_of(api, "alice").count(plan.job.id) == 1
    call(api, "alice", "DELETE", f"/v1/jobs/{plan.job.id}")
