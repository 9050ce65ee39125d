"""Schema-driven fuzzing of every endpoint in /openapi.json, bounded in examples (a few seconds each).

Bodies come from the published SubmitRequest schema (valid-shaped) and from arbitrary JSON, text
and bytes (hostile); path and query parameters from their declared types and from arbitrary text.
No answer may be a 5xx; every error is the JSON error shape; every accepted job reads back whole.
"""
from __future__ import annotations

import json
import re

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
ANY_TEXT = st.text(max_size=40)
"""Any code points, lone surrogates and NUL included (JSON escapes them)."""


@pytest.fixture(scope="module")
def api(stack_factory) -> str:
    """A producer + Redis with no worker: accepted jobs stay queued (an OpenAI request waits 1 s for its job)."""
    return stack_factory("fuzz", env={"SDQ_OPENAI_WAIT_SECONDS": "1"}).env["SDQ_SERVER"]


@pytest.fixture(scope="module")
def spec(api) -> dict:
    return requests.get(api + "/openapi.json", timeout=10).json()


@pytest.fixture(scope="module")
def session() -> requests.Session:
    return requests.Session()


def check(resp: requests.Response, api: str, session: requests.Session) -> None:
    """No 5xx; errors in the JSON error shape naming a field for 4xx; accepted jobs read back whole."""
    assert resp.status_code < 500, (resp.status_code, resp.request.method, resp.request.url, resp.text[:500])
    if resp.request.path_url.startswith("/openai/"):  # the OpenAI door answers in OpenAI's error shape
        if resp.status_code >= 400:
            err = resp.json()["error"]
            assert {"message", "type", "param", "code"} <= set(err) and err["message"]
            assert err["param"] or resp.status_code in (401, 404, 405, 408, 429), err
        return
    if resp.status_code not in (405,) and resp.status_code >= 400 and resp.request.path_url.startswith("/sdapi/"):
        detail = resp.json()["detail"]
        assert detail and (resp.status_code != 422 or all(d["loc"] and d["msg"] for d in detail)), detail
    elif resp.status_code >= 400 and resp.status_code != 405:
        err = resp.json()["error"]
        assert set(err) == {"code", "message", "field"} and err["message"]
        if resp.status_code not in (401, 404, 405, 429):
            assert err["field"], err
    if resp.status_code == 202 and resp.request.method == "POST" and resp.request.path_url == "/v1/jobs":
        body = resp.json()
        doc = session.get(f"{api}/v1/jobs/{body['id']}?limit=5", timeout=10)
        assert doc.status_code == 200, doc.text[:300]
        doc = doc.json()
        assert doc["state"] == "queued" and doc["n_items"] == body["items"] > 0
        assert len(doc["items"]) == min(5, body["items"]) and all(it["state"] == "queued" for it in doc["items"])
        # the job's Lua state scripts work on it (cancel runs one over every item); this keeps the queue short
        assert session.delete(f"{api}/v1/jobs/{body['id']}", timeout=10).status_code == 202
        assert session.get(f"{api}/v1/jobs/{body['id']}?limit=1", timeout=10).json()["state"] == "cancelled"


def from_schema(schema: dict, components: dict) -> st.SearchStrategy:
    """Values shaped by a JSON schema (the subset pydantic emits), edges and a little beyond included."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return st.deferred(lambda: from_schema(components[name], components))
    if "anyOf" in schema:
        return st.one_of([from_schema(s, components) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        if props:
            return st.fixed_dictionaries({}, optional={k: from_schema(v, components) for k, v in props.items()})
        values = from_schema(extra, components) if isinstance(extra, dict) else TEXT
        return st.dictionaries(TEXT, values, max_size=4)
    if kind == "array":
        items = from_schema(schema.get("items", {}), components)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=min(5, schema.get("maxItems", 5)))
    if kind == "string":
        return st.text(st.characters(codec="utf-8"), max_size=min(60, schema.get("maxLength", 60)))
    if kind == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        edges = [v for v in (lo, hi) if v is not None] + [v + d for v, d in ((lo, -1), (hi, 1)) if v is not None]
        return st.integers(lo, hi) | st.sampled_from(edges or [0, -1, 2**63])
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False) | st.floats(allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return st.none() | st.booleans() | st.integers() | TEXT  # {} : anything


def _submit_schema(spec: dict) -> st.SearchStrategy:
    return from_schema({"$ref": "#/components/schemas/SubmitRequest"}, spec["components"]["schemas"])


def test_openapi_lists_every_route(api, spec):
    from producer.app import create_app

    routes = {re.sub(r"<[^>]+>", "{id}", r.rule) for r in create_app().url_map.iter_rules()
              if not r.rule.startswith("/static") and r.rule != "/openapi.json" and r.rule != "/"}
    assert routes <= set(spec["paths"]), routes - set(spec["paths"])


def _valid_bodies() -> st.SearchStrategy:
    """Bodies inside every limit (mostly accepted): the positive half of the fuzzing."""
    from sdq import contract, families

    prompt = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=80).filter(
        str.strip)
    side = st.integers(1, 32).map(lambda n: n * 8)
    params = st.fixed_dictionaries({"width": side, "height": side}, optional={
        "steps": st.integers(1, 150), "guidance_scale": st.floats(0, 50), "seed": st.integers(0, 2**32 - 1),
        "scheduler": st.sampled_from([s for s in contract.SCHEDULERS if families.family(families.SD).runs(s)]), "images_per_prompt": st.integers(1, 3),
        "negative_prompt": prompt, "grid": st.booleans()})
    sweep = st.fixed_dictionaries({}, optional={"steps": st.lists(st.integers(1, 150), min_size=1, max_size=3, unique=True),
                                                "seed": st.lists(st.integers(0, 99), min_size=1, max_size=3, unique=True)})
    return st.fixed_dictionaries({"prompts": st.lists(prompt, min_size=1, max_size=4), "params": params},
                                 optional={"priority": st.integers(0, 9), "sweep": sweep,
                                           "requires": st.fixed_dictionaries({"device": st.sampled_from(["any", "cpu", "gpu"])})})


def test_fuzz_submit_with_valid_bodies_reads_them_back(api, session):
    accepted = []

    @FUZZ
    @given(body=_valid_bodies())
    def run(body):
        resp = session.post(api + "/v1/jobs", json=body, timeout=30)
        assert resp.status_code == 202, resp.text[:300]
        doc = session.get(f"{api}/v1/jobs/{resp.json()['id']}?limit=1", timeout=10).json()
        assert doc["items"][0]["prompt"] == body["prompts"][0]  # strings survive Redis unchanged
        accepted.append(doc["id"])
        check(resp, api, session)

    run()
    assert len(accepted) >= 50  # every example was accepted; the count shows they ran


def test_fuzz_submit_with_schema_shaped_bodies(api, spec, session):
    @FUZZ
    @given(body=_submit_schema(spec))
    def run(body):
        data = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
        check(session.post(api + "/v1/jobs", data=data, headers={"Content-Type": "application/json"}, timeout=30),
              api, session)

    run()


def _json_values():
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(ANY_TEXT, inner, max_size=5),
                        max_leaves=30)


def test_fuzz_submit_with_hostile_json(api, session):
    keys = st.sampled_from(["prompts", "items", "model", "pipeline", "params", "requires", "priority",
                            "webhook_url", "sweep", "seed", "steps"])
    body = st.dictionaries(keys, _json_values(), max_size=6) | _json_values()

    @FUZZ
    @given(body=body)
    def run(body):
        data = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
        check(session.post(api + "/v1/jobs", data=data, headers={"Content-Type": "application/json"}, timeout=30),
              api, session)

    run()


def test_fuzz_submit_with_hostile_bytes_and_content_types(api, session):
    types = st.sampled_from(["application/json", "text/plain", "text/csv", "application/x-ndjson",
                             "application/jsonl", "multipart/form-data", "image/png", "", "text/plain; charset=latin-1"])
    query = st.dictionaries(st.sampled_from(["steps", "width", "seed", "model", "grid", "priority", "x", "device"]),
                            TEXT, max_size=3)

    @FUZZ
    @given(data=st.binary(max_size=300) | TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
           content_type=types, params=query)
    def run(data, content_type, params):
        for path in ("/v1/jobs", "/v1/uploads"):
            resp = session.post(api + path, data=data, params=params, headers={"Content-Type": content_type},
                                timeout=30)
            check(resp, api, session)

    run()


def test_fuzz_every_path_and_query_parameter(api, spec, session):
    operations = [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    ids = st.one_of(TEXT.filter(lambda t: "/" not in t and t not in (".", "..")), st.just("0" * 32),
                    st.text("0123456789abcdef", min_size=32, max_size=32))
    numbers = st.one_of(st.integers(), TEXT)

    @FUZZ
    @given(op=st.sampled_from(operations), job_id=ids, offset=numbers, limit=numbers)
    def run(op, job_id, offset, limit):
        path, method, spec_op = op
        names = {p["name"] for p in spec_op.get("parameters", ()) if p["in"] == "query"}
        params = {k: v for k, v in (("offset", offset), ("limit", limit)) if k in names}
        url = api + path.replace("{id}", requests.utils.quote(job_id, safe=""))
        resp = session.request(method.upper(), url, params=params, timeout=30,
                               stream=path.endswith("/events"))
        try:
            check(resp, api, session)
        finally:
            resp.close()

    run()


def test_fuzz_openai_door_with_schema_shaped_and_hostile_bodies(api, spec, session):
    """The OpenAI door's generation bodies from its published schema and arbitrary JSON; its edits with
    arbitrary bytes, fields and files: never a 5xx, every error in OpenAI's shape naming the parameter."""
    shaped = from_schema({"$ref": "#/components/schemas/OpenAIImageRequest"}, spec["components"]["schemas"])
    keys = st.sampled_from(["prompt", "model", "n", "size", "quality", "response_format", "output_format",
                            "output_compression", "stream", "user", "image", "mask", "x"])
    hostile = st.dictionaries(keys, _json_values(), max_size=6) | _json_values()

    @FUZZ
    @given(body=shaped | hostile, form=st.dictionaries(keys, TEXT, max_size=5),
           files=st.dictionaries(st.sampled_from(["image", "image[]", "mask", "other"]), st.binary(max_size=200),
                                 max_size=3))
    def run(body, form, files):
        data = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
        check(session.post(api + "/openai/v1/images/generations", data=data,
                           headers={"Content-Type": "application/json"}, timeout=30), api, session)
        check(session.post(api + "/openai/v1/images/edits", data=form,
                           files={k: ("f.png", v, "image/png") for k, v in files.items()}, timeout=30), api, session)

    run()


def test_fuzz_openai_door_with_valid_bodies_submits_jobs(api, session):
    """Valid generation requests become sdq jobs (no worker here: each answer is the 408 naming its job)."""
    prompt = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=60).filter(
        str.strip)
    side = st.integers(1, 64).map(lambda n: n * 8)
    body = st.fixed_dictionaries({"prompt": prompt}, optional={
        "n": st.integers(1, 10), "size": st.just("auto") | st.builds(lambda w, h: f"{w}x{h}", side, side),
        "quality": st.sampled_from(["low", "medium", "high", "auto", "standard", "hd"]),
        "response_format": st.sampled_from(["url", "b64_json"]), "model": st.sampled_from(["builtin:tiny-sd"]),
        "user": prompt, "style": st.sampled_from(["vivid", "natural"]), "moderation": st.sampled_from(["low", "auto"])})

    @settings(FUZZ, max_examples=15)
    @given(body=body)
    def run(body):
        resp = session.post(api + "/openai/v1/images/generations", json=body, timeout=30)
        assert resp.status_code == 408, resp.text[:300]
        job_id = resp.json()["error"]["job_id"]
        doc = session.get(f"{api}/v1/jobs/{job_id}?limit=1", timeout=10).json()
        assert doc["state"] == "queued" and doc["n_items"] == body.get("n", 1)
        assert doc["items"][0]["prompt"] == body["prompt"]
        assert session.delete(f"{api}/v1/jobs/{job_id}", timeout=10).status_code == 202

    run()
