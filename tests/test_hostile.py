"""Hostile input: bombs, oversized and malformed bodies, poison strings, unavailable services.

Refusals are checked over HTTP on a private producer + Redis without workers (jobs stay queued);
memory and dead-service cases run the app in-process, where they can be measured or arranged.
"""
from __future__ import annotations

import json
import os
import time
import tracemalloc

import pytest
import requests

from producer.app import create_app
from cli.services import Stack, free_port
from sdq.config import Settings

SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def hostile(stack_factory) -> Stack:
    """A producer + Redis with no worker."""
    return stack_factory("hostile")


@pytest.fixture(scope="module")
def api(hostile) -> str:
    """The address of the `hostile` stack's producer."""
    return hostile.env["SDQ_SERVER"]


def post(api: str, body=None, data=None, content_type="application/json", path="/v1/jobs", timeout=30):
    if body is not None:
        data = json.dumps(body)
    return requests.post(api + path, data=data, headers={"Content-Type": content_type}, timeout=timeout)


def refused(resp, status: int | tuple[int, ...], field: str | None = None) -> dict:
    """Assert a JSON error with this status (and field); return the error."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert resp.status_code in statuses, (resp.status_code, resp.text[:300])
    err = resp.json()["error"]
    assert set(err) == {"code", "message", "field"}
    if field is not None:
        assert err["field"] == field, err
    return err


def dead_app(**settings):
    """The producer app in-process, with Redis and S3 on ports where nothing listens."""
    dead = f"127.0.0.1:{free_port()}"
    values = {"redis_url": f"redis://{dead}/0", "s3_endpoint_url": f"http://{dead}", "s3_bucket": "sdq-dead",
              **settings}
    return create_app(settings=Settings(**values)), dead


# -- 1. sweep bomb ------------------------------------------------------------------------------

SWEEP_BOMB = {"prompts": ["a"], "params": SMALL, "sweep": {
    "steps": list(range(1, 65)), "guidance_scale": [i / 4 for i in range(64)], "seed": list(range(64)),
    "strength": [i / 64 for i in range(64)], "noise_level": list(range(64))}}


def test_sweep_bomb_is_refused_before_expansion(api):
    """64^5 combinations in a ~2 kB body: 422 naming `sweep`, in well under a second."""
    started = time.monotonic()
    resp = post(api, SWEEP_BOMB, timeout=10)
    assert time.monotonic() - started < 1.0
    assert "1073741824 items" in refused(resp, 422, "sweep")["message"]


# -- 2. body amplification and size per content type ----------------------------------------------

@pytest.mark.parametrize("content_type, limit", [("application/json", "MAX_JSON_BODY_BYTES"),
                                                 ("text/plain", "MAX_PROMPT_FILE_BYTES")])
def test_submit_body_over_its_content_type_limit_is_413(api, content_type, limit):
    from sdq import defaults

    size = getattr(defaults, limit) + 1
    data = (b'{"prompts": ["' + b"a" * (size - 17) + b'"]}') if content_type == "application/json" else b"a" * size
    refused(post(api, data=data, content_type=content_type), 413, "body")


def test_bodies_of_requests_that_take_none_are_bounded(api):
    job = post(api, {"prompts": ["a"], "params": SMALL}).json()["id"]
    resp = requests.post(f"{api}/v1/jobs/{job}/retry", data=b"x" * (1024 * 1024), timeout=30)
    refused(resp, 413, "body")


def test_many_tiny_json_values_are_refused_unparsed():
    """8 MB of 20-byte items would be ~1 kB of Python objects each: refused before parsing, memory stays low."""
    app, _ = dead_app()
    item = b'{"prompt": "a b c"},'
    data = b'{"items": [' + item * (8 * 1024 * 1024 // len(item)) + b'{"prompt": "z"}]}'
    client = app.test_client()
    tracemalloc.start()
    try:
        resp = client.post("/v1/jobs", data=data, content_type="application/json")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status_code == 413 and resp.json["error"]["field"] == "body"
    assert peak < 6 * len(data), f"peak {peak} bytes for a {len(data)}-byte body"


def test_prompt_list_longer_than_the_schema_allows_is_422():
    app, _ = dead_app(max_items=200_000)
    resp = app.test_client().post("/v1/jobs", json={"prompts": ["a"] * 100_001, "params": SMALL})
    assert resp.status_code == 422 and resp.json["error"]["field"] == "prompts", resp.json


# -- 3. poison strings ---------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    ({"prompts": ["a"], "sweep": {"negative_prompt": ["\ud800"]}}, "sweep.negative_prompt[0]"),
    ({"prompts": ["a\udfff"]}, "prompts[0]"),
    ({"prompts": ["a\x00b"]}, "prompts[0]"),
    ({"items": [{"prompt": "a", "negative_prompt": "x\x00"}]}, "items[0].negative_prompt"),
    ({"prompts": ["a"], "params": {"negative_prompt": "\x1b[2J"}}, "params.negative_prompt"),
])
def test_strings_that_would_poison_redis_are_refused(api, body, field):
    body.setdefault("params", {}).update(SMALL)
    refused(post(api, body), 422, field)


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "text/csv", "application/x-ndjson"])
def test_invalid_utf8_is_400(api, content_type):
    data = {"application/json": b'{"prompts": ["\xff\xfe"]}', "text/plain": b"a cat\n\xc3\x28\n",
            "text/csv": b"prompt\n\xed\xa0\x80\n", "application/x-ndjson": b'{"prompt": "\xf8"}\n'}[content_type]
    refused(post(api, data=data, content_type=content_type), 400, "body")


# -- 4. malformed input that used to be a 500 ------------------------------------------------------

@pytest.mark.parametrize("content_type, data, status", [
    ("application/json", b"[" * 200_000, (400, 413)),
    ("application/json", b'{"prompts": ["a"], "sweep": {"steps": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}}", 400),
    ("application/json", b'{"prompts": ["a"], "params": {"seed": 1e400}}', 400),
    ("application/json", b'{"prompts": ["a"], "params": {"guidance_scale": NaN}}', 400),
    ("application/json", b'{"prompts": ["a"], "params": {"seed": ' + b"9" * 5000 + b"}}", 400),
    ("application/x-ndjson", b'{"prompt": "a", "seed": 1e400}\n', 422),
    ("application/x-ndjson", b'{"prompt": "a", "seed": ' + b"[" * 100_000 + b"\n", (400, 422)),
    ("text/csv", b'prompt\n"' + b"a" * 200_000 + b'"\n', 422),
    ("text/csv", b"prompt,seed\na,1e400\n", 422),
])
def test_malformed_bodies_get_4xx_naming_the_body(api, content_type, data, status):
    refused(post(api, data=data, content_type=content_type), status, "body")


def test_s3_down_at_upload_is_503_with_retry_after():
    from tests.test_uploads import image_bytes

    app, _ = dead_app()
    resp = app.test_client().post("/v1/uploads", data=image_bytes("PNG"), content_type="image/png")
    assert resp.status_code == 503, resp.json
    assert int(resp.headers["Retry-After"]) > 0 and set(resp.json["error"]) == {"code", "message", "field"}


def test_redis_down_is_503_without_its_address():
    app, dead = dead_app()
    resp = app.test_client().get("/healthz")
    assert resp.status_code == 503 and int(resp.headers["Retry-After"]) > 0
    assert dead not in resp.get_data(as_text=True) and dead.split(":")[1] not in resp.get_data(as_text=True)


def test_a_submit_whose_enqueue_fails_leaves_no_job_and_no_charge_on_the_cap(hostile):
    """The broker refuses the task messages (a real Celery app on a port where nothing listens) while
    the job store works: 503, the job record is rolled back, the tenant's cap is untouched."""
    from sdq.celery_app import make_celery

    token, owner = "tok-rollback", "rollback-tenant"
    app = create_app(settings=Settings.from_env({**os.environ, **hostile.env, "SDQ_API_TOKENS": f"{owner}:{token}",
                                                 "SDQ_MAX_QUEUED_ITEMS": "3"}))
    working = app.extensions["celery"]
    app.extensions["celery"] = make_celery(f"redis://127.0.0.1:{free_port()}/0")
    app.extensions["celery"].conf.broker_connection_max_retries = 0
    client, auth = app.test_client(), {"Authorization": f"Bearer {token}"}
    body = {"prompts": ["a", "b", "c"], "params": SMALL}

    resp = client.post("/v1/jobs", json=body, headers=auth)
    assert resp.status_code == 503, resp.json
    jobs = app.extensions["sdq_jobs"]
    assert jobs.list_jobs(owner, 0, 10) == ([], 0)
    assert client.get("/v1/jobs", headers=auth).json["total"] == 0
    assert jobs.queued_items_of(owner) == 0

    app.extensions["celery"] = working  # the broker is back: the same 3 items fit under the cap of 3
    resp = client.post("/v1/jobs", json=body, headers=auth)
    assert resp.status_code == 202, resp.json
    client.delete(f"/v1/jobs/{resp.json['id']}", headers=auth)


# -- explicit cases: every one a 4xx JSON error naming its field ------------------------------------

def _big(n: int) -> str:
    return "x" * n


CASES = [
    ({"prompts": "a cat"}, 422, "prompts"),
    ({"prompts": [1, 2]}, 422, "prompts[0]"),
    ({"prompts": ["a"], "params": {"steps": "many"}}, 422, "params.steps"),
    ({"prompts": ["a"], "params": {"steps": 10**30}}, 422, "params.steps"),
    ({"prompts": ["a"], "params": {"steps": -1}}, 422, "params.steps"),
    ({"prompts": ["a"], "params": {"seed": -5}}, 422, "params.seed"),
    ({"prompts": ["a"], "params": {"seed": 2**64}}, 422, "params.seed"),
    ({"prompts": ["a"], "params": {"width": 10**9}}, 422, "params.width"),
    ({"prompts": ["a"], "params": {"guidance_scale": -1e308}}, 422, "params.guidance_scale"),
    ({"prompts": ["a"], "priority": "high"}, 422, "priority"),
    ({"prompts": [_big(1024 * 1024)]}, 422, "prompts"),
    ({"items": [{"prompt": _big(1024 * 1024)}]}, 422, "items[0].prompt"),
    ({"prompts": ["a"], "colour": "red"}, 422, "colour"),
    ({"prompts": ["a"], "params": {"sharpness": 3}}, 422, "params.sharpness"),
    ({"prompts": ["a"], "model": "../../etc/passwd"}, 422, "model"),
    ({"prompts": ["a"], "model": "/root/.ssh/id_rsa"}, 422, "model"),
    ({"prompts": ["a"], "model": "https://evil.example/model.ckpt"}, 422, "model"),
    ({"prompts": ["a"], "model": "file:///etc/passwd"}, 422, "model"),
    ({"prompts": ["a"], "webhook_url": "file:///etc/passwd"}, 422, "webhook_url"),
    ({"prompts": ["a"], "webhook_url": "gopher://127.0.0.1:6379/_FLUSHALL"}, 422, "webhook_url"),
    ({"prompts": ["a"], "webhook_url": "ftp://example.com/x"}, 422, "webhook_url"),
    ({"prompts": ["a"], "webhook_url": "http://127.0.0.1:6379/"}, 422, "webhook_url"),
    ({"prompts": ["a"], "webhook_url": "http://[64:ff9b::7f00:1]/"}, 422, "webhook_url"),
    ({"prompts": ["a"], "webhook_url": "http://[::ffff:10.0.0.1]/"}, 422, "webhook_url"),
    ({"prompts": ["a"], "sweep": {"steps": [[1]]}}, 422, "sweep.steps"),
    ({"prompts": ["a"], "sweep": {"prompt": ["x"]}}, 422, "sweep.prompt"),
    ({"prompts": ["a"], "sweep": {"steps": list(range(1, 66))}}, 422, "sweep.steps"),
    ({"prompts": ["a"], "params": {"init_image": "../../etc/passwd"}, "pipeline": "img2img"}, 422, "params.init_image"),
    ([1, 2, 3], 400, "body"),
    ("just a string", 400, "body"),
]


@pytest.mark.parametrize("body, status, field", CASES, ids=[str(i) for i in range(len(CASES))])
def test_explicit_bad_inputs(api, body, status, field):
    if isinstance(body, dict):
        body.setdefault("params", {}).update({k: v for k, v in SMALL.items() if k not in body["params"]})
    err = refused(post(api, body), status, field)
    assert err["field"]  # every 4xx names a field


def test_hundred_thousand_and_one_prompts_are_refused(api):
    refused(post(api, {"prompts": ["a"] * 100_001, "params": SMALL}), (413, 422))


def test_missing_or_wrong_content_type_is_400(api):
    refused(post(api, data=b'{"prompts": ["a"]}', content_type="application/xml"), 400, "body")


@pytest.mark.parametrize("data, content_type, status", [
    (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif", 415),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", 415),
    (b"%PDF-1.4\n", "application/pdf", 415),
])
def test_non_image_uploads_are_refused(api, data, content_type, status):
    refused(requests.post(api + "/v1/uploads", data=data, headers={"Content-Type": content_type}, timeout=30),
            status, "file")


def test_bomb_upload_is_refused_unread(api):
    from tests.test_uploads import png_header_only

    resp = requests.post(api + "/v1/uploads", data=png_header_only(60000, 60000),
                         headers={"Content-Type": "image/png"}, timeout=30)
    refused(resp, 413, "file")


def test_bad_query_arguments_name_the_argument(api):
    refused(requests.get(api + "/v1/jobs?limit=1e9", timeout=10), 400, "limit")
    refused(requests.get(api + "/v1/jobs?offset=-1", timeout=10), 400, "offset")
    refused(post(api, data=b"a cat\n", content_type="text/plain", path="/v1/jobs?steps=2&evil=1"), 422, "evil")


def test_unknown_job_ids_are_404_json(api):
    for job_id in ("nope", "a" * 1000, "%00", "..%2F..%2Fetc"):
        refused(requests.get(f"{api}/v1/jobs/{job_id}", timeout=10), 404)


# -- 10. grid size -----------------------------------------------------------------------------------

@pytest.mark.unit
def test_grid_of_1024_large_images_fits_the_pixel_cap():
    """1,024 cells of 1024x1024 would be a 1.1-gigapixel sheet; cells shrink to fit GRID_MAX_PIXELS."""
    from sdq import defaults
    from sdq.gridlayout import cell_for, grid_size, layout
    from sdq.records import Item, Job

    job = Job(pipeline="txt2img", params={"images_per_prompt": 32})
    items = [Item(index=i, params={"width": 1024, "height": 1024}) for i in range(1024)]
    cell = cell_for(job, items)
    rows, cols = layout(job, len(items))
    width, height = grid_size(rows, cols, cell)
    assert width * height <= defaults.GRID_MAX_PIXELS and min(cell) >= defaults.GRID_MIN_CELL


@pytest.mark.unit
def test_grid_sheet_is_built_within_its_pixel_cap():
    from PIL import Image

    from workers.finishing.grid import make_grid
    from sdq.records import Item, Job

    image = Image.new("RGB", (512, 512), (10, 200, 30))
    job = Job(params={"images_per_prompt": 16})
    items = [Item(index=i, prompt=f"p{i // 16}", state="succeeded") for i in range(256)]
    sheet = make_grid(job, items, {i: image for i in range(256)}, max_pixels=4_000_000)
    assert sheet.width * sheet.height <= 4_000_000
    assert sheet.getpixel((sheet.width - 5, sheet.height - 5)) == (10, 200, 30)  # the last cell holds its image
