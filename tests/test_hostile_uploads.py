"""Uploads cannot stall the producer: large images are decoded off the gevent loop, each tenant has
a cap on uploads being decoded at once and a daily byte quota."""
from __future__ import annotations

import io
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

TOKENS = {name: f"tok-uploads-{name}" for name in ("alice", "bob", "carol", "dave", "erin")}
QUOTA = 20 * 1024 * 1024


def large_image(side: int = 4096, seed: int = 0) -> bytes:
    """A `side` x `side` JPEG (a few MB) that takes seconds to decode and re-encode as PNG."""
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(seed).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).resize((side, side), Image.BICUBIC).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture(scope="module")
def api(stack_factory) -> str:
    """A producer (gunicorn + gevent, 2 processes) with tenants, the default decode cap (2) and a
    20 MB daily upload quota."""
    tokens = ",".join(f"{owner}:{tok}" for owner, tok in TOKENS.items())
    return stack_factory("uploads-hostile", env={"SDQ_API_TOKENS": tokens, "SDQ_UPLOAD_QUOTA_BYTES": str(QUOTA)}
                         ).env["SDQ_SERVER"]


def upload_as(api: str, owner: str, data: bytes) -> requests.Response:
    return requests.post(api + "/v1/uploads", data=data, timeout=120,
                         headers={"Authorization": f"Bearer {TOKENS[owner]}", "Content-Type": "image/jpeg"})


def _healthz_while(api: str, busy: threading.Event) -> list[float]:
    latencies = []
    session = requests.Session()
    while not busy.is_set():
        started = time.monotonic()
        session.get(api + "/healthz", timeout=30).raise_for_status()
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    return latencies


@pytest.mark.serial
def test_large_uploads_leave_healthz_answering(api):
    """Four 16 Mpx uploads at once (two tenants, two each): /healthz answers within 1 s throughout;
    decoded on the gevent loop, each one stopped its process for seconds."""
    data = large_image()
    done = threading.Event()
    with ThreadPoolExecutor(5) as pool:
        probe = pool.submit(_healthz_while, api, done)
        time.sleep(0.5)
        uploads = [pool.submit(upload_as, api, owner, data) for owner in ("alice", "bob", "alice", "bob")]
        answers = [u.result() for u in uploads]
        done.set()
        latencies = probe.result()
    assert [a.status_code for a in answers] == [201] * 4, [a.text[:200] for a in answers]
    assert all(a.json()["width"] == 4096 for a in answers)
    print(f"/healthz during 4 large uploads: n={len(latencies)} median {statistics.median(latencies):.3f} s "
          f"max {max(latencies):.3f} s")
    assert len(latencies) >= 5 and max(latencies) < 1.0, sorted(latencies)[-5:]


def test_a_tenant_decodes_at_most_its_cap_at_once(api):
    """Five large uploads of one tenant at once: at most 2 are decoded, the rest get 429 with
    Retry-After; another tenant's upload meanwhile is accepted."""
    data = large_image(3072, seed=1)
    with ThreadPoolExecutor(6) as pool:
        mine = [pool.submit(upload_as, api, "carol", data) for _ in range(5)]
        time.sleep(0.3)
        theirs = pool.submit(upload_as, api, "dave", data)
        answers = [m.result() for m in mine]
        other = theirs.result()
    codes = sorted(a.status_code for a in answers)
    assert codes.count(201) >= 1 and codes.count(429) >= 1 and set(codes) <= {201, 429}, codes
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["field"] == "file" and int(refused.headers["Retry-After"]) > 0
    assert other.status_code == 201, other.text


def test_upload_bytes_are_capped_per_tenant_per_day(api):
    """Erin may send QUOTA bytes a day: the upload that would pass it is 429 until midnight UTC;
    another tenant still uploads."""
    from tests.test_uploads import image_bytes

    data = image_bytes("PNG", (512, 512))  # noise: ~0.8 MB
    accepted = 0
    for _ in range(QUOTA // len(data) + 2):
        resp = upload_as(api, "erin", data)
        if resp.status_code != 201:
            break
        accepted += 1
    assert resp.status_code == 429, resp.text
    assert accepted == QUOTA // len(data)
    assert resp.json()["error"]["field"] == "file" and "quota" in resp.json()["error"]["message"]
    assert 0 < int(resp.headers["Retry-After"]) <= 86400
    assert upload_as(api, "alice", data).status_code == 201
