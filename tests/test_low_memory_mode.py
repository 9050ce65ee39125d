"""Low-memory mode (VAE slicing and tiling, the out-of-memory fallback) applies to the image sizes that
needed it, not for good, and its results have result-cache keys of their own (issue 39, item 10): a tiled
decode is never served for an untiled request. On a real stack, with a worker whose simulated device runs
out of memory above 64x64 (`--debug-oom-pixels`)."""
from __future__ import annotations

import numpy as np

from cli.client import Client
from tests.conftest import wait_job, wait_until
from tests.test_fleet import WARM, start_workers
from tests.test_pipelines import pixels, result

BIG = {"prompts": ["a pier"], "params": {"width": 128, "height": 128, "steps": 2, "seed": 3}}
SMALL = {"prompts": ["a pier"], "params": {"width": 64, "height": 64, "steps": 2, "seed": 3}}


def _item(client: Client, body: dict) -> dict:
    doc = wait_job(client, client.submit(body)["id"], timeout=240)
    assert doc["state"] == "succeeded", doc
    return doc["items"][0]


def test_low_memory_mode_follows_the_image_size_and_has_its_own_cache_key(stack_factory, store):
    st = stack_factory("lowmem")
    svcs = start_workers(st, ("tight", *WARM, "--debug-oom-pixels", "4096"))
    client = Client(st.env["SDQ_SERVER"])
    # 1. 128x128 does not fit in normal mode: made in low-memory mode (tiled decode)
    tiled = _item(client, BIG)
    assert (tiled["oom_retries"], tiled["low_memory"], tiled.get("cached")) == (1, True, None), tiled
    # 2. a 64x64 image fits without it: low-memory mode is off again for it
    small = _item(client, SMALL)
    assert (small["low_memory"], small["oom_retries"]) == (None, None), small
    # 3. the same 128x128 request on the same worker: in low-memory mode again, so the tiled result is its answer
    again = _item(client, BIG)
    assert again.get("cached") is True and again["cached_from"]["index"] == 0, again
    # 4. a worker with room decodes 128x128 whole: the tiled result is not its answer
    start_workers(st, ("roomy", *WARM))
    svcs["tight"].stop()
    wait_until(lambda: {w["name"] for w in client.workers()} == {"roomy"}, "'tight' left the fleet", 60)
    whole = _item(client, BIG)
    assert (whole["worker"], whole.get("cached"), whole["low_memory"]) == ("roomy", None, None), whole
    assert not np.array_equal(pixels(result(store, whole)), pixels(result(store, tiled)))  # tiles differ
    assert _item(client, BIG).get("cached") is True  # ...and it is filed under the whole decode's key
