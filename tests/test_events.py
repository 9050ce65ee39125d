"""Live events (Server-Sent Events) and the CLI's progress and summary, on the shared stack."""
from __future__ import annotations

import requests

from tests.conftest import FAST, wait_job
from tests.test_cli import sdq


def _by_item(events: list[tuple[str, dict]], name: str) -> dict[int, int]:
    """Position in the stream of the first event `name` of each item."""
    out: dict[int, int] = {}
    for pos, (event, data) in enumerate(events):
        if event == name:
            out.setdefault(data["index"], pos)
    return out


def test_events_arrive_in_order_and_end_with_job_finished(client, store):
    # item 0 is big enough (256x256, 12 steps) to report step progress; 1 and 2 are tiny
    items = [{"prompt": "a slow big one", "width": 256, "height": 256, "steps": 12},
             {"prompt": "small one"}, {"prompt": "small two"}]
    job_id = client.submit({"items": items, "params": {**FAST, "seed": 3}})["id"]
    events = list(client.events(job_id))
    names = [e for e, _ in events]
    assert names[0] == "job.state" and events[0][1]["id"] == job_id
    assert names[-1] == "job.finished" and names.count("job.finished") == 1
    assert events[-1][1]["state"] == "succeeded" and events[-1][1]["counts"]["succeeded"] == 3
    started, finished = _by_item(events, "item.started"), _by_item(events, "item.finished")
    assert sorted(finished) == [0, 1, 2]
    for index, pos in finished.items():
        if events[0][1]["state"] == "queued":  # connected before the job started: every start is seen
            assert started[index] < pos
        data = events[pos][1]
        assert data["state"] == "succeeded" and data["seed"] == 3 + index
        assert requests.get(data["url"], timeout=10).content == store.get(data["key"])
    progress = [d for e, d in events if e == "item.progress" and d["index"] == 0]
    assert progress, names
    assert all(started.get(0, 0) < events.index(("item.progress", d)) < finished[0] for d in progress)
    assert [d["step"] for d in progress] == sorted(d["step"] for d in progress)


def test_late_client_gets_current_state_then_the_end(client):
    job_id = client.submit({"prompts": ["late"], "params": FAST})["id"]
    wait_job(client, job_id)
    events = list(client.events(job_id))
    assert [e for e, _ in events] == ["job.state", "job.finished"]
    state = events[0][1]
    assert state["state"] == "succeeded" and state["counts"]["succeeded"] == 1 and state["progress"] == 1.0


def test_event_stream_headers(client):
    job_id = client.submit({"prompts": ["headers"], "params": FAST})["id"]
    wait_job(client, job_id)
    resp = requests.get(f"{client.server}/v1/jobs/{job_id}/events", timeout=30)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.text.rstrip().splitlines()[-2] == "event: job.finished"


def test_wait_shows_progress_and_ends_with_a_summary_table(stack):
    server = stack.env["SDQ_SERVER"]
    out = sdq("submit", "-", "--wait", "--steps", "3", "--width", "64", "--height", "64", server=server,
              stdin="one\ntwo\nthree\n")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip().splitlines()[0]
    assert "items 3/3 done" in out.stderr and "steps 9/9" in out.stderr
    lines = out.stderr.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith(f"job {job_id}  succeeded  3 items"))
    assert lines[head + 1].split() == ["STATE", "ITEMS"]
    assert ["succeeded", "3"] in [line.split() for line in lines[head + 2:head + 7]]
    worker_rows = [line.split() for line in lines if line.startswith("w-main ")]
    assert worker_rows and worker_rows[0][1] == "3"
    again = sdq("wait", job_id, server=server)
    assert again.returncode == 0 and "WORKER" in again.stderr
