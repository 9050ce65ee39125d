"""`params.preview`: live previews of images forming, read from a real stack's event stream and decoded."""
from __future__ import annotations

import base64
import io
import json
import threading
import time

import pytest
import redis
from PIL import Image

from sdq import defaults, pipelines
from cli.client import Client
from sdq.exceptions import InvalidInput
from sdq.options import OPTIONS, Submit
from sdq.state.keys import events_channel
from tests.conftest import wait_job

LONG = {"steps": 60, "width": 256, "height": 256, "seed": 11}
"""A 60-step item: long enough on one CPU thread to be previewed several times."""


@pytest.fixture(scope="module")
def preview_stack(stack_factory):
    """Redis + producer + one CPU worker that batches up to 4 images in a call."""
    st = stack_factory("previews")
    st.worker("w-preview", "--device", "cpu", "--threads", "1", "--max-batch", "4", "--preload", "builtin:tiny-sd")
    return st


def _decoded(data: dict) -> Image.Image:
    head, _, b64 = data["image"].partition(",")
    assert head == "data:image/jpeg;base64"
    raw = base64.b64decode(b64)
    assert len(raw) <= defaults.PREVIEW_MAX_BYTES
    img = Image.open(io.BytesIO(raw))
    img.load()
    return img


class Published(threading.Thread):
    """Every `item.preview` the workers publish on a job's channel (before any stream drops some)."""

    def __init__(self, url: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(events_channel(job_id))
        self.previews: list[dict] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            msg = self.pubsub.get_message(timeout=0.2)
            if msg and msg["type"] == "message":
                event = json.loads(msg["data"])
                if event["event"] == "item.preview":
                    self.previews.append(event["data"])


def test_a_long_item_streams_previews_of_its_image_forming(preview_stack):
    client = Client(preview_stack.env["SDQ_SERVER"])
    job = client.submit({"prompts": ["a castle in the fog"], "params": {**LONG, "preview": True}})
    previews, finished_at = [], None
    for name, data in client.events(job["id"]):
        if name == "item.preview":
            assert finished_at is None  # previews come while the item is being made, never after it
            previews.append(data)
        elif name == "item.finished":
            finished_at = len(previews)
    assert len(previews) >= 2, previews
    for data in previews:
        assert data["index"] == 0 and 0 < data["step"] < data["steps"] == 60
        img = _decoded(data)
        assert img.size == (defaults.PREVIEW_SIDE, defaults.PREVIEW_SIDE)  # 256 px shrunk to the preview side
    assert [d["step"] for d in previews] == sorted(d["step"] for d in previews)
    assert wait_job(client, job["id"])["state"] == "succeeded"


def test_previews_are_bounded_per_item_and_per_stream(preview_stack):
    """Four items in one batch: the worker publishes each item's preview at most every `interval` seconds; one
    stream forwards at most one preview every STREAM_PREVIEW_INTERVAL, so of the four made at one step (published
    within milliseconds) it drops some."""
    client = Client(preview_stack.env["SDQ_SERVER"])
    body = {"prompts": [f"a lighthouse, take {i}" for i in range(4)],
            "params": {**LONG, "steps": 40, "preview": {"interval": 0.5}}}
    job = client.submit(body)
    published = Published(preview_stack.env["SDQ_REDIS_URL"], job["id"])
    published.start()
    t0 = time.monotonic()
    streamed = [d for name, d in client.events(job["id"]) if name == "item.preview"]
    elapsed = time.monotonic() - t0
    published.done.set()
    published.join(5)
    per_item = {i: [d for d in published.previews if d["index"] == i] for i in range(4)}
    assert all(per_item.values()), {i: len(v) for i, v in per_item.items()}  # each item was previewed
    for made in per_item.values():
        assert len(made) <= min(defaults.PREVIEW_MAX_PER_ITEM, elapsed / 0.5 + 1)
    assert streamed and len(streamed) < len(published.previews)  # the stream dropped some of the batch's previews
    assert len(streamed) <= elapsed / defaults.STREAM_PREVIEW_INTERVAL + 1


def test_a_job_with_previews_is_answered_from_the_cache_like_one_without(preview_stack):
    client = Client(preview_stack.env["SDQ_SERVER"])
    body = {"prompts": ["a quiet harbour"], "params": {"steps": 4, "width": 64, "height": 64, "seed": 5}}
    first = wait_job(client, client.submit(body)["id"])
    again = wait_job(client, client.submit({**body, "params": {**body["params"], "preview": True}})["id"])
    assert not first["items"][0]["cached"] and again["items"][0]["cached"] is True


def test_preview_is_checked_at_submit(preview_stack):
    client = Client(preview_stack.env["SDQ_SERVER"])
    resp = client.session.post(f"{preview_stack.env['SDQ_SERVER']}/v1/jobs", timeout=10,
                               json={"prompts": ["x"], "params": {"preview": {"interval": 0.01}}})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "params.preview.interval"
    with pytest.raises(InvalidInput) as err:  # the upscaler's legacy step hook gives no latents to preview
        OPTIONS["preview"].check(True, Submit(pipelines.spec("upscale"), "builtin:tiny-upscaler", None, ()))
    assert err.value.field == "params.preview"
