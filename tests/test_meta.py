"""The service's own routes: web page, metrics, OpenAPI, tokens."""
from __future__ import annotations

import requests


def test_openapi_describes_submit(stack):
    doc = requests.get(stack.env["SDQ_SERVER"] + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.")
    assert "post" in doc["paths"]["/v1/jobs"]
    props = doc["components"]["schemas"]["SubmitRequest"]["properties"]
    assert {"prompts", "items", "model", "pipeline", "params", "priority"} <= set(props)


def test_metrics_show_the_fleet(stack):
    text = requests.get(stack.env["SDQ_SERVER"] + "/metrics", timeout=10).text
    assert "sdq_workers_live 1.0" in text
    assert 'sdq_worker_items_done{device="cpu",dtype="fp32",worker="w-main"}' in text
    assert "sdq_queue_messages{queue=" in text


def test_web_page(stack):
    resp = requests.get(stack.env["SDQ_SERVER"] + "/", timeout=10)
    assert resp.ok and "text/html" in resp.headers["Content-Type"] and "/v1/jobs" in resp.text


def test_tokens_guard_every_call_but_healthz(stack_factory):
    st = stack_factory("tokens", env={"SDQ_API_TOKENS": "alice:tok-a,bob:tok-b"})
    base = st.env["SDQ_SERVER"]
    assert requests.get(base + "/healthz", timeout=10).ok
    for path in ("/v1/jobs", "/v1/workers", "/metrics", "/openapi.json"):
        resp = requests.get(base + path, timeout=10)
        assert resp.status_code == 401 and resp.json()["error"]["field"] == "Authorization", path
    alice, bob = {"Authorization": "Bearer tok-a"}, {"Authorization": "Bearer tok-b"}
    resp = requests.post(base + "/v1/jobs", json={"prompts": ["x"], "params": {"width": 64, "height": 64}},
                         headers=alice, timeout=10)
    assert resp.status_code == 202
    job_id = resp.json()["id"]
    assert requests.get(f"{base}/v1/jobs/{job_id}", headers=alice, timeout=10).ok
    assert requests.get(f"{base}/v1/jobs/{job_id}", headers=bob, timeout=10).status_code == 404
    assert requests.delete(f"{base}/v1/jobs/{job_id}", headers=bob, timeout=10).status_code == 404
    assert [j["id"] for j in requests.get(base + "/v1/jobs", headers=alice, timeout=10).json()["jobs"]] == [job_id]
    assert requests.get(base + "/v1/jobs", headers=bob, timeout=10).json()["jobs"] == []


def test_metrics_gauge_a_backlog_that_no_worker_consumes(stack_factory):
    """Issue 39: with no worker (scale from zero, a worker class all gone), queued items had no gauge."""
    st = stack_factory("meta-alone")
    base = st.env["SDQ_SERVER"]
    resp = requests.post(base + "/v1/jobs", json={"prompts": ["a", "b", "c"], "params": {"width": 64, "height": 64},
                                                  "requires": {"device": "gpu"}}, timeout=10)
    assert resp.status_code == 202, resp.text
    text = requests.get(base + "/metrics", timeout=10).text
    assert "sdq_workers_live 0.0" in text
    line = next((ln for ln in text.splitlines() if ln.startswith('sdq_queue_messages{queue="sdq.gpu.any.p256"}')), "")
    assert line and float(line.split()[-1]) >= 1, text
