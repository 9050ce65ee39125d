"""Prompt-list request bodies, big jobs, job listing and ownership, queue position (prompt-file parsing:
tests/unit/test_prompts.py).

The API tests run on a private producer + Redis with bearer tokens and no worker, so jobs stay
queued and nothing else talks to that Redis.
"""
from __future__ import annotations

import base64
import json
import threading

import pytest
import redis
import requests

from cli.client import Client
from sdq.exceptions import ApiError

TOKENS = {"alice": "tok-alice-1", "bob": "tok-bob-2"}


# -- the API, on a private token-protected stack ------------------------------------------------

@pytest.fixture(scope="module")
def api(stack_factory):
    """A producer + Redis with tokens and no workers: jobs stay queued."""
    tokens = ",".join(f"{owner}:{tok}" for owner, tok in TOKENS.items())
    return stack_factory("formats-api", env={"SDQ_API_TOKENS": tokens})


@pytest.fixture(scope="module")
def alice(api) -> Client:
    return Client(api.env["SDQ_SERVER"], TOKENS["alice"])


@pytest.fixture(scope="module")
def bob(api) -> Client:
    return Client(api.env["SDQ_SERVER"], TOKENS["bob"])


def _post(api, data: str, content_type: str, token: str = TOKENS["alice"], **query) -> requests.Response:
    return requests.post(api.env["SDQ_SERVER"] + "/v1/jobs", data=data.encode(), params=query, timeout=60,
                         headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"})


def test_csv_body_with_query_params(api, alice):
    csv_text = "prompt,seed,steps,negative_prompt\na red fox,21,3,\na blue bird,,,fog\n"
    resp = _post(api, csv_text, "text/csv; charset=utf-8", steps="5", width="64", height="64", seed="100",
                 priority="7", negative_prompt="blurry")
    assert resp.status_code == 202, resp.text
    doc = alice.job(resp.json()["id"])
    assert doc["priority"] == 7 and doc["params"]["steps"] == 5 and doc["params"]["width"] == 64
    a, b = doc["items"]
    assert (a["prompt"], a["seed"], a["params"]["steps"], a["negative_prompt"]) == ("a red fox", 21, 3, "blurry")
    assert (b["prompt"], b["seed"], b["params"]["steps"], b["negative_prompt"]) == ("a blue bird", 101, 5, "fog")


def test_text_and_ndjson_bodies(api, alice):
    resp = _post(api, "one\n# not a prompt\n\ntwo\n", "text/plain", steps="2", model="builtin:tiny-sd")
    assert resp.status_code == 202, resp.text
    assert [it["prompt"] for it in alice.job(resp.json()["id"])["items"]] == ["one", "two"]
    lines = '{"prompt": "x", "width": 128, "height": 64}\n{"prompt": "y", "seed": 5}\n'
    resp = _post(api, lines, "application/x-ndjson", seed="1")
    assert resp.status_code == 202, resp.text
    x, y = alice.job(resp.json()["id"])["items"]
    assert (x["params"]["width"], x["params"]["height"], x["seed"]) == (128, 64, 1)
    assert (y["params"]["width"], y["seed"]) == (512, 5)


@pytest.mark.parametrize("data, content_type, query, field", [
    ("a\n", "text/plain", {"colour": "red"}, "colour"),
    ("a\n", "text/plain", {"steps": "many"}, "params.steps"),
    ("prompt,colour\na,red\n", "text/csv", {}, "body"),
    ("# nothing\n", "text/plain", {}, "prompts"),
    ('{"prompt": "a", "width": 100}\n', "application/x-ndjson", {}, "items[0].width"),
])
def test_bad_prompt_file_bodies_are_422_naming_the_field(api, data, content_type, query, field):
    resp = _post(api, data, content_type, **query)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field


def _queued_messages(r: redis.Redis, prefix: str) -> list[dict]:
    out = []
    for key in r.scan_iter(match=prefix + "*"):
        if r.type(key) == b"list":
            for raw in r.lrange(key, 0, -1):
                body = json.loads(base64.b64decode(json.loads(raw)["body"]))
                out.append(body[1]["chunk"])
    return out


def test_ten_thousand_prompts_in_one_request(api, alice):
    r = redis.Redis.from_url(api.env["SDQ_REDIS_URL"])
    text = "".join(f"prompt number {i}\n" for i in range(10_000))
    resp = _post(api, text, "text/plain", steps="2", width="64", height="64", device="gpu")
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    try:
        assert resp.json()["items"] == 10_000
        chunks = [c for c in _queued_messages(r, "sdq.gpu.") if c["job"] == job_id]
        assert sum(len(c["items"]) for c in chunks) == 10_000
        assert len(chunks) <= 10_000 // 8  # bulk: many items per message, not one message per image
        # The status of a 10,000-item job reads the job hash and one page of items, never all of them.
        commands = _monitor(r, lambda: alice.job(job_id, offset=9_950, limit=100))
        items_key = f"sdq:job:{job_id}:items"
        on_items = [c for c in commands if items_key in c]
        assert on_items and all(c.split()[0].upper() == "HMGET" for c in on_items), on_items
        assert sum(len(c.split()) - 2 for c in on_items) <= 100
        assert max(len(c.split()) for c in commands) <= 110
        doc = alice.job(job_id, offset=9_950, limit=100)
        assert [it["index"] for it in doc["items"]] == list(range(9_950, 10_000))
        assert doc["items"][-1]["prompt"] == "prompt number 9999"
        assert doc["counts"]["queued"] == 10_000 and doc["progress"] == 0.0
    finally:
        alice.cancel(job_id)
    assert alice.job(job_id, limit=0)["counts"]["cancelled"] == 10_000


def _monitor(r: redis.Redis, action) -> list[str]:
    """The Redis commands (as text) run by anyone while `action()` runs."""
    marker = "sdq-test-monitor-end"
    seen: list[str] = []
    started = threading.Event()

    def listen() -> None:
        with r.monitor() as m:
            started.set()
            while True:
                cmd = m.next_command()["command"]
                if marker in cmd:
                    return
                seen.append(cmd)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert started.wait(10)
    r.ping()  # MONITOR is active once the listener's connection answered; give it a round trip
    action()
    r.echo(marker)
    thread.join(10)
    assert not thread.is_alive()
    return seen


def test_too_many_items_is_refused_naming_the_field(api):
    text = "".join(f"p{i}\n" for i in range(10_001))
    resp = _post(api, text, "text/plain")
    assert resp.status_code == 422
    err = resp.json()["error"]
    assert err["field"] == "prompts" and err["code"] == "too_many_items" and "10000" in err["message"]
    resp = requests.post(api.env["SDQ_SERVER"] + "/v1/jobs", timeout=60,
                         headers={"Authorization": f"Bearer {TOKENS['alice']}"},
                         json={"prompts": ["a", "b"], "params": {"images_per_prompt": 2},
                               "sweep": {"seed": list(range(60)), "steps": list(range(1, 51))}})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "sweep"


def test_list_jobs_newest_first_and_only_the_callers(api, alice, bob):
    ids = [alice.submit({"prompts": [f"job {i}"], "params": {"steps": 2}})["id"] for i in range(3)]
    mine = alice.jobs(limit=100)
    listed = [j["id"] for j in mine["jobs"]]
    assert listed[:3] == ids[::-1] and mine["total"] >= 3
    assert alice.jobs(offset=1, limit=1)["jobs"][0]["id"] == ids[1]
    theirs = bob.submit({"prompts": ["bob's"], "params": {"steps": 2}})["id"]
    assert [j["id"] for j in bob.jobs()["jobs"]] == [theirs]
    assert theirs not in [j["id"] for j in alice.jobs(limit=100)["jobs"]]
    # someone else's job does not exist for you
    for call in (lambda: bob.job(ids[0]), lambda: bob.cancel(ids[0]), lambda: bob.retry(ids[0]),
                 lambda: list(bob.events(ids[0]))):
        with pytest.raises(ApiError) as err:
            call()
        assert err.value.status == 404
    assert alice.job(ids[0])["state"] == "queued"
    no_token = requests.get(api.env["SDQ_SERVER"] + "/v1/jobs", timeout=10)
    assert no_token.status_code == 401


def test_queue_position_counts_items_served_first(api, alice):
    def submit(n: int, priority: int, device: str = "any") -> str:
        body = {"prompts": [f"p{i}" for i in range(n)], "params": {"steps": 2}, "priority": priority,
                "requires": {"device": device}}
        return alice.submit(body)["id"]

    def pos(job_id: str) -> int:
        return alice.job(job_id, limit=0)["queue_position"]

    a = submit(3, 5)
    base = pos(a)  # items of earlier tests' jobs still queued ahead
    b = submit(2, 5)
    c = submit(4, 6)
    gpu = submit(1, 5, "gpu")
    cpu = submit(1, 5, "cpu")
    assert pos(c) <= base              # more urgent than a and b: ahead of both
    assert pos(a) == base + 4          # c's items are served first now
    assert pos(b) == base + 4 + 3      # and a's: same priority, earlier
    assert pos(cpu) == pos(gpu) == base + 3 + 2 + 4  # a gpu-only job does not hold up a cpu-only one
    alice.cancel(a)
    assert alice.job(a, limit=0)["queue_position"] is None
    assert pos(b) == base + 4
