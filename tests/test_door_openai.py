"""The OpenAI Images API door, driven by the official `openai` package against a real stack."""
from __future__ import annotations

import base64
import io
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests
from PIL import Image

from tests.conftest import wait_until

TOKENS = {"alice": "tok-oa-alice", "capped": "tok-oa-capped", "load": "tok-oa-load"}
CAP = 250
"""SDQ_MAX_QUEUED_ITEMS of the stack: room for the load test's 200 waiting jobs."""
UNSERVED = "512x512"
"""A size no worker of the stack serves (its worker takes at most 256x256): such a job waits."""


@pytest.fixture(scope="module")
def oa_stack(stack_factory, store, models_dir):
    """Tenants, an alias, a small queue cap, a pushed model and a pushed LoRA adapter allowed, and one warm
    CPU worker serving images up to 256x256."""
    from sdq.loras import ADAPTER_FILE
    from sdq.sources import builtin_path
    from storage.models import push

    push(store, builtin_path(models_dir, "tiny-sd"), "oa-tiny")
    push(store, builtin_path(models_dir, "tiny-lora") / ADAPTER_FILE, "oa-lora")
    st = stack_factory("openai", env={
        "SDQ_API_TOKENS": ",".join(f"{o}:{t}" for o, t in TOKENS.items()), "SDQ_MAX_QUEUED_ITEMS": str(CAP),
        "SDQ_OPENAI_MODELS": "dall-e-3=builtin:tiny-sd", "SDQ_OPENAI_WAIT_SECONDS": "120",
        "SDQ_MODELS": "store:oa-tiny,store:oa-lora"})
    st.worker("w-oa", "--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd", "--max-pixels", "65536")
    return st


def _client(stack, owner: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.env['SDQ_SERVER']}/openai/v1", api_key=TOKENS[owner], max_retries=0,
                         timeout=180)


def _as(owner: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[owner]}"}


def _job(stack, job_id: str, owner: str = "alice") -> dict:
    resp = requests.get(f"{stack.env['SDQ_SERVER']}/v1/jobs/{job_id}", headers=_as(owner), timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _error(exc_info) -> tuple[int, dict]:
    exc = exc_info.value
    body = exc.body if isinstance(exc.body, dict) else {}
    return exc.status_code, body.get("error", body)


def test_generate_url_and_b64_json_with_several_images(oa_stack):
    client = _client(oa_stack)
    by_url = client.images.generate(model="dall-e-3", prompt="a lighthouse at dusk", n=2, size="64x64",
                                    quality="low", response_format="url")
    assert len(by_url.data) == 2 and by_url.size == "64x64"
    for entry in by_url.data:
        img = Image.open(io.BytesIO(requests.get(entry.url, timeout=30).content))
        assert img.format == "PNG" and img.size == (64, 64)
    job = _job(oa_stack, by_url.job_id)  # an ordinary sdq job of the caller's tenant
    assert job["state"] == "succeeded" and job["n_items"] == 2 and job["model"] == "builtin:tiny-sd"
    assert job["params"]["steps"] == 10  # quality low: half of the default 20 steps
    listed = requests.get(f"{oa_stack.env['SDQ_SERVER']}/v1/jobs", headers=_as("alice"), timeout=10).json()
    assert by_url.job_id in [j["id"] for j in listed["jobs"]]

    by_b64 = client.images.generate(model="builtin:tiny-sd", prompt="a lighthouse at dusk", n=3, size="64x128",
                                    response_format="b64_json", output_format="jpeg", output_compression=80)
    assert len(by_b64.data) == 3 and by_b64.output_format == "jpeg"
    for entry in by_b64.data:
        img = Image.open(io.BytesIO(base64.b64decode(entry.b64_json)))
        assert img.format == "JPEG" and img.size == (64, 128)


def test_edit_with_a_mask_inpaints_its_transparent_part(oa_stack, store):
    client = _client(oa_stack)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # the left half is transparent: repaint it
    out = client.images.edit(image=("in.png", _png(image), "image/png"), mask=("mask.png", _png(mask), "image/png"),
                             prompt="a blue door", response_format="b64_json", size="64x64")
    assert Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json))).size == (64, 64)
    job = _job(oa_stack, out.job_id)
    assert job["pipeline"] == "inpaint" and job["state"] == "succeeded" and job["params"]["strength"] == 1.0
    item = job["items"][0]
    sdq_mask = Image.open(io.BytesIO(store.get(item["images"]["mask_image"]))).convert("L")
    assert sdq_mask.getpixel((5, 30)) == 255 and sdq_mask.getpixel((60, 30)) == 0  # sdq: white is repainted


def test_edit_without_a_mask_is_img2img(oa_stack):
    client = _client(oa_stack)
    image = _png(Image.new("RGB", (64, 64), (10, 120, 200)))
    out = client.images.edit(image=[("in.png", image, "image/png")], prompt="stormy", n=2)  # sent as image[]
    job = _job(oa_stack, out.job_id)
    assert job["pipeline"] == "img2img" and job["n_items"] == 2 and job["items"][0]["init_image"]
    for entry in out.data:
        assert Image.open(io.BytesIO(requests.get(entry.url, timeout=30).content)).size == (64, 64)
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.edit(image=[("a.png", image, "image/png"), ("b.png", image, "image/png")], prompt="two")
    assert _error(exc)[1]["param"] == "image"
    with pytest.raises(openai.BadRequestError) as exc:  # a mask must say what to repaint with its alpha
        client.images.edit(image=("a.png", image, "image/png"), mask=("m.png", image, "image/png"), prompt="x")
    assert _error(exc)[1]["param"] == "mask"


@pytest.mark.parametrize("size", ["100x64", "64", "4096x4096", "0x64"])
def test_bad_sizes_are_openai_errors_naming_size(oa_stack, size):
    with pytest.raises(openai.BadRequestError) as exc:
        _client(oa_stack).images.generate(prompt="x", size=size)
    status, err = _error(exc)
    assert status == 400 and err["param"] == "size" and err["type"] == "invalid_request_error" and err["message"]


def test_unknown_models_arguments_and_tokens_are_openai_errors(oa_stack):
    client = _client(oa_stack)
    with pytest.raises(openai.NotFoundError) as exc:
        client.images.generate(model="dall-e-9", prompt="x", size="64x64")
    assert _error(exc)[1] == {**_error(exc)[1], "param": "model", "code": "model_not_found"}
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(prompt="x", size="64x64", extra_body={"colour": "red"})
    assert _error(exc)[1]["param"] == "colour"
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(prompt="x", n=11)
    assert _error(exc)[1]["param"] == "n"
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(prompt="x", background="transparent")
    assert _error(exc)[1]["param"] == "background"
    bad = openai.OpenAI(base_url=f"{oa_stack.env['SDQ_SERVER']}/openai/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.images.generate(prompt="x")
    status, err = _error(exc)
    assert status == 401 and set(err) >= {"message", "type", "param", "code"}


def test_tenant_past_its_cap_gets_a_429_in_openai_shape(oa_stack):
    api = oa_stack.env["SDQ_SERVER"]
    full = requests.post(api + "/v1/jobs", headers=_as("capped"), timeout=30, json={
        "prompts": [f"p{i}" for i in range(CAP)], "requires": {"device": "gpu"},
        "params": {"width": 64, "height": 64, "steps": 2}})
    assert full.status_code == 202, full.text
    try:
        with pytest.raises(openai.RateLimitError) as exc:
            _client(oa_stack, "capped").images.generate(prompt="one more", size="64x64")
        status, err = _error(exc)
        assert status == 429 and err["type"] == "rate_limit_error" and "limit" in err["message"]
        assert exc.value.response.headers.get("Retry-After")
    finally:
        requests.delete(f"{api}/v1/jobs/{full.json()['id']}", headers=_as("capped"), timeout=10)


def test_past_the_wait_bound_the_answer_names_the_job_which_goes_on(oa_stack):
    client = _client(oa_stack)
    with pytest.raises(openai.APIStatusError) as exc:
        client.images.generate(prompt="waits", size=UNSERVED, extra_headers={"Prefer": "wait=1"})
    status, err = _error(exc)
    assert status == 408 and err["code"] == "job_pending" and exc.value.response.headers["x-should-retry"] == "false"
    job = _job(oa_stack, err["job_id"])
    assert job["state"] == "queued"  # it goes on (here: until a worker for 512x512 joins)
    requests.delete(f"{oa_stack.env['SDQ_SERVER']}/v1/jobs/{err['job_id']}", headers=_as("alice"), timeout=10)


def test_models_catalog_and_its_openai_view(oa_stack):
    api = oa_stack.env["SDQ_SERVER"]
    listed = {m.id: m for m in _client(oa_stack).models.list()}
    assert "dall-e-3" in listed and "builtin:tiny-sd" in listed and "builtin:tiny-sdxl" in listed
    assert listed["dall-e-3"].sdq["id"] == "builtin:tiny-sd" and listed["dall-e-3"].object == "model"
    assert "builtin:tiny-lora" not in listed  # adapters are options of models, not models
    assert _client(oa_stack).models.retrieve("dall-e-3").id == "dall-e-3"
    with pytest.raises(openai.NotFoundError):
        _client(oa_stack).models.retrieve("nope")

    models = {m["id"]: m for m in requests.get(api + "/v1/models", headers=_as("alice"), timeout=10).json()["models"]}
    tiny = models["builtin:tiny-sd"]
    assert tiny["family"] == "sd" and "inpaint" in tiny["pipelines"] and tiny["kind"] == "builtin"
    assert "builtin:tiny-lora" in tiny["options"]["loras"]["ids"] and tiny["options"]["controlnet"]["ids"]
    assert tiny["defaults"]["steps"] == 20 and tiny["defaults"]["width"] == 512
    assert wait_until(lambda: "w-oa" in requests.get(api + "/v1/models", headers=_as("alice"), timeout=10).json()[
        "models"][0]["warm_on"], "the warm worker listed", 30)
    assert models["builtin:tiny-sdxl"]["family"] == "sdxl" and models["builtin:tiny-sdxl"]["defaults"]["width"] == 256
    assert models["builtin:tiny-upscaler"]["pipelines"] == ["upscale"]
    pushed = models["store:oa-tiny"]  # its family read from the bucket; the pushed LoRA is an option, not a model
    assert pushed["kind"] == "store" and pushed["family"] == "sd" and "inpaint" in pushed["pipelines"]
    assert "store:oa-lora" not in models and "store:oa-lora" in pushed["options"]["loras"]["ids"]
    assert "store:oa-lora" in tiny["options"]["loras"]["ids"]
    assert "store:oa-lora" not in models["builtin:tiny-sdxl"]["options"]["loras"]["ids"]  # an SD adapter


WAITERS = 200


@pytest.mark.slow
@pytest.mark.serial
def test_two_hundred_waiting_requests_leave_status_reads_fast(oa_stack, capsys):
    """200 OpenAI requests wait for jobs no worker serves; meanwhile GET /v1/jobs/{id} answers with p99 < 100 ms."""
    api = oa_stack.env["SDQ_SERVER"]
    probe = requests.post(api + "/v1/jobs", headers=_as("alice"), timeout=10, json={
        "prompts": ["probe"], "requires": {"device": "gpu"}, "params": {"width": 64, "height": 64}}).json()["id"]
    answers: list[int] = []
    lock = threading.Lock()

    def wait_one(n: int) -> None:
        resp = requests.post(api + "/openai/v1/images/generations", timeout=120,
                             headers={**_as("load"), "Prefer": "wait=40"}, json={"prompt": f"w{n}", "size": UNSERVED})
        with lock:
            answers.append(resp.status_code)

    session = requests.Session()
    session.headers.update(_as("load"))
    with ThreadPoolExecutor(WAITERS) as pool:
        futures = [pool.submit(wait_one, n) for n in range(WAITERS)]
        wait_until(lambda: session.get(api + "/v1/jobs?limit=1", timeout=10).json()["total"] >= WAITERS,
                   "every waiting request submitted its job", 60)
        waiting_now = WAITERS - len(answers)
        latencies = []
        reader = requests.Session()
        reader.headers.update(_as("alice"))
        for _ in range(300):
            started = time.monotonic()
            assert reader.get(f"{api}/v1/jobs/{probe}", timeout=10).status_code == 200
            latencies.append(time.monotonic() - started)
        still_waiting = WAITERS - len(answers)
        for f in futures:
            f.result()
    p99 = statistics.quantiles(latencies, n=100)[98]
    with capsys.disabled():
        print(f"\n{WAITERS} waiting OpenAI requests: GET /v1/jobs/{{id}} p50 {statistics.median(latencies) * 1000:.1f} ms "
              f"p99 {p99 * 1000:.1f} ms max {max(latencies) * 1000:.1f} ms")
    assert waiting_now == WAITERS and still_waiting == WAITERS  # the reads ran while all 200 waited
    assert answers == [408] * WAITERS
    ids = [j["id"] for offset in (0, 100) for j in session.get(f"{api}/v1/jobs?limit=100&offset={offset}",
                                                                 timeout=10).json()["jobs"]]
    for job_id in ids + [probe]:
        requests.delete(f"{api}/v1/jobs/{job_id}", headers=_as("load" if job_id != probe else "alice"), timeout=10)
    assert p99 < 0.1


@pytest.mark.unit
def test_door_settings_from_the_environment():
    from producer.doors.openai_params import DoorSettings
    from sdq.exceptions import ConfigError

    door = DoorSettings.from_env({"SDQ_OPENAI_MODELS": "dall-e-3=builtin:tiny-sd, gpt-image-1 = store:ink",
                                  "SDQ_OPENAI_WAIT_SECONDS": "12.5"})
    assert door.aliases == {"dall-e-3": "builtin:tiny-sd", "gpt-image-1": "store:ink"} and door.wait_seconds == 12.5
    assert door.resolve(None) == "builtin:tiny-sd" and door.resolve("gpt-image-1") == "store:ink"
    assert door.resolve("builtin:tiny-sdxl") == "builtin:tiny-sdxl"
    assert DoorSettings.from_env({}).resolve(None) == "builtin:tiny-sd"
    for env in ({"SDQ_OPENAI_MODELS": "dall-e-3"}, {"SDQ_OPENAI_MODELS": "=x"}, {"SDQ_OPENAI_WAIT_SECONDS": "soon"},
                {"SDQ_OPENAI_WAIT_SECONDS": "0"}):
        with pytest.raises(ConfigError, match=next(iter(env))):
            DoorSettings.from_env(env)


@pytest.mark.unit
def test_quality_maps_to_steps_and_unknown_arguments_are_refused():
    from producer.doors.openai_params import parse_request
    from sdq.exceptions import InvalidInput

    steps = {q: parse_request({"prompt": "x", "quality": q}, 100).steps for q in ("low", "medium", "high", "hd")}
    assert steps == {"low": 10, "medium": 20, "high": 40, "hd": 40}
    assert parse_request({"prompt": "x", "n": "3", "size": "auto"}, 100).n == 3  # multipart fields are text
    for body, param in (({"prompt": "x", "sizes": "1"}, "sizes"), ({"prompt": "x", "stream": True}, "stream"),
                        ({}, "prompt"), ({"prompt": "x", "output_format": "gif"}, "output_format"),
                        ({"prompt": "x", "output_format": "jpeg"}, "output_format"),  # jpeg comes only as b64_json
                        ({"prompt": "x", "n": 0}, "n"), ({"prompt": "x", "quality": "ultra"}, "quality")):
        with pytest.raises(InvalidInput) as exc:
            parse_request(body, 100)
        assert exc.value.field == param and exc.value.status == 400


def test_a_model_without_the_pipeline_is_refused_naming_model(oa_stack):
    with pytest.raises(openai.BadRequestError) as exc:
        _client(oa_stack).images.generate(model="builtin:tiny-upscaler", prompt="x", size="64x64")
    status, err = _error(exc)
    assert status == 400 and err["param"] == "model" and "upscale" in err["message"]


def test_an_edit_with_a_model_that_cannot_edit_is_refused_naming_model(oa_stack):
    image = _png(Image.new("RGB", (64, 64), (10, 120, 200)))
    with pytest.raises(openai.BadRequestError) as exc:
        _client(oa_stack).images.edit(model="builtin:tiny-upscaler", image=("a.png", image, "image/png"), prompt="x")
    assert _error(exc)[1]["param"] == "model"


def test_a_request_retried_with_its_idempotency_key_answers_the_first_job(oa_stack):
    client = _client(oa_stack)
    key = {"Idempotency-Key": "oa-retry-1"}
    first = client.images.generate(model="dall-e-3", prompt="a red kite", n=1, size="64x64", quality="low",
                                   extra_headers=key)
    again = client.images.generate(model="dall-e-3", prompt="a red kite", n=1, size="64x64", quality="low",
                                   extra_headers=key)
    assert again.job_id == first.job_id  # one job, answered twice
    other = client.images.generate(model="dall-e-3", prompt="a red kite", n=1, size="64x64", quality="low")
    assert other.job_id != first.job_id  # without the key: a new job
    with pytest.raises(openai.APIStatusError) as err:
        client.images.generate(model="dall-e-3", prompt="a blue kite", n=1, size="64x64", quality="low",
                               extra_headers=key)
    status, body = _error(err)
    assert status == 400 and body["param"] == "Idempotency-Key"  # the key was used for another request
