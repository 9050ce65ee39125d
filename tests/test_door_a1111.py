"""The A1111 door (`/sdapi/v1`) driven by the `webuiapi` client itself against a real stack (tiny model, 64x64)."""
from __future__ import annotations

import io
import json
import threading
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
import webuiapi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cli.client import Client
from tests.conftest import wait_job, wait_until

TOKENS = {"alice": "tok-alice", "bob": "tok-bob", "carol": "tok-carol", "dave": "tok-dave", "erin": "tok-erin"}
CAP = 8
"""Queued items per tenant on the door's stack."""
FAST = {"width": 64, "height": 64, "steps": 4}


@pytest.fixture(scope="module")
def door(stack_factory):
    """Redis + producer (tokens, a small cap per tenant) + one warm CPU worker."""
    env = {"SDQ_API_TOKENS": ",".join(f"{o}:{t}" for o, t in TOKENS.items()), "SDQ_MAX_QUEUED_ITEMS": str(CAP),
           "SDQ_A1111_WAIT_SECONDS": "180"}
    st_ = stack_factory("a1111", env=env)
    st_.worker("w-a1111", "--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd")
    return st_.env["SDQ_SERVER"]


@pytest.fixture(scope="module")
def idle(stack_factory):
    """Redis + producer without any worker and a 0.5 s wait bound: jobs stay queued."""
    return stack_factory("a1111-idle", env={"SDQ_A1111_WAIT_SECONDS": "0.5"}).env["SDQ_SERVER"]


def api_for(server: str, owner: str) -> webuiapi.WebUIApi:
    url = urlparse(server)
    api = webuiapi.WebUIApi(host=url.hostname, port=url.port, sampler="Euler a", steps=4)
    api.set_auth("anyone", TOKENS[owner])
    return api


def sdq_for(server: str, owner: str) -> Client:
    return Client(server, token=TOKENS[owner])


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float32)


def test_txt2img_batch_has_consecutive_seeds_and_distinct_images(door):
    api = api_for(door, "alice")
    result = api.txt2img(prompt="a hamster painting with a brush", seed=1234, batch_size=2, n_iter=2, **FAST)
    assert len(result.images) == 4 and all(im.size == (64, 64) for im in result.images)
    assert result.info["all_seeds"] == [1234, 1235, 1236, 1237] and result.info["seed"] == 1234
    assert result.info["sampler_name"] == "Euler a" and result.info["steps"] == 4
    assert "Seed: 1235" in result.info["infotexts"][1] and "Sampler: Euler a" in result.info["infotexts"][1]
    assert np.abs(pixels(result.images[0]) - pixels(result.images[1])).mean() > 5
    assert result.parameters["batch_size"] == 2 and result.parameters["prompt"].startswith("a hamster")
    # an ordinary sdq job of the caller's tenant, seen in its own API
    job = sdq_for(door, "alice").job(result.info["job_id"])
    assert job["state"] == "succeeded" and job["params"]["scheduler"] == "euler_a" and job["n_items"] == 4
    assert result.info["job_id"] not in [j["id"] for j in sdq_for(door, "bob").jobs()["jobs"]]


def test_seed_minus_one_is_random_and_lora_tags_become_adapters(door):
    api = api_for(door, "alice")
    result = api.txt2img(prompt="a bird <lora:tiny-lora:0.7>", seed=-1, **FAST)
    seed = result.info["seed"]
    assert isinstance(seed, int) and seed >= 0 and result.info["all_seeds"] == [seed]
    job = sdq_for(door, "alice").job(result.info["job_id"])
    assert job["params"]["loras"] == [{"name": "builtin:tiny-lora", "scale": 0.7}]
    assert job["items"][0]["prompt"] == "a bird" and result.info["all_prompts"] == ["a bird <lora:tiny-lora:0.7>"]
    assert "<lora:tiny-lora:0.7>" in result.info["infotexts"][0]


def test_img2img_starts_from_the_init_image(door):
    api = api_for(door, "bob")
    init = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))).convert("RGB")
    result = api.img2img(images=[init], prompt="a castle", denoising_strength=0.6, seed=7, **FAST)
    assert len(result.images) == 1 and result.image.size == (64, 64)
    job = sdq_for(door, "bob").job(result.info["job_id"])
    assert job["pipeline"] == "img2img" and job["params"]["strength"] == 0.6
    assert job["params"]["init_image"].startswith("uploads/")
    assert result.parameters["init_images"] is None  # not echoed unless include_init_images


def test_inpaint_with_a_mask_white_repaints_and_invert_flips_it(door, store):
    api = api_for(door, "bob")
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # A1111: white = repaint (the left half)
    made = {}
    for invert in (0, 1):
        result = api.img2img(images=[init], mask_image=mask, inpainting_mask_invert=invert, prompt="a door",
                             denoising_strength=0.9, seed=11, **FAST)
        job = sdq_for(door, "bob").job(result.info["job_id"])
        assert job["pipeline"] == "inpaint" and job["state"] == "succeeded"
        stored = np.asarray(Image.open(io.BytesIO(store.get(job["params"]["mask_image"]))).convert("L"))
        left, right = stored[:, :32].mean(), stored[:, 32:].mean()
        assert (left, right) == ((255.0, 0.0) if invert == 0 else (0.0, 255.0))  # sdq's mask: white repaints
        made[invert] = pixels(result.image)
    assert np.abs(made[0] - made[1]).mean() > 1


def test_models_samplers_schedulers_and_loras(door):
    api = api_for(door, "alice")
    assert "builtin:tiny-sd" in api.util_get_model_names()
    names = api.util_get_sampler_names()
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "PLMS"} <= set(names)
    assert [s["name"] for s in api.get_schedulers()] == ["automatic"]
    assert {"tiny-lora"} <= {lo["name"] for lo in api.get_loras()}
    assert api.get_scripts() == {"txt2img": [], "img2img": []} and not api.has_controlnet


def test_options_are_per_tenant(door):
    carol, dave = api_for(door, "carol"), api_for(door, "dave")
    assert carol.get_options()["sd_model_checkpoint"] == "builtin:tiny-sd"
    carol.set_options({"sd_model_checkpoint": "builtin:tiny-sdxl"})
    assert carol.util_get_current_model() == "builtin:tiny-sdxl"
    assert dave.get_options()["sd_model_checkpoint"] == "builtin:tiny-sd"  # another tenant does not see it
    bad = carol.session.post(carol.baseurl + "/options", json={"sd_model_checkpoint": "nope"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "sd_model_checkpoint"]
    # the tenant's checkpoint is what its next request runs on (refused at submit: sdxl takes no 64x64 LoRA...)
    wrong = carol.session.post(carol.baseurl + "/txt2img", json={
        "prompt": "x <lora:tiny-lora:1>", **FAST})
    assert wrong.status_code == 422 and "sdxl" in json.dumps(wrong.json()).lower()
    carol.set_options({"sd_model_checkpoint": "builtin:tiny-sd"})


def test_unknown_sampler_and_unsupported_fields_are_422_naming_them(door):
    api = api_for(door, "alice")
    with pytest.raises(RuntimeError) as err:
        api.txt2img(prompt="x", sampler_name="Bogus Sampler", **FAST)
    status, text = err.value.args
    assert status == 422 and json.loads(text)["detail"][0]["loc"] == ["body", "sampler_name"] and "Bogus" in text
    for extra, field in (({"scheduler": "Karras"}, "scheduler"), ({"restore_faces": True}, "restore_faces"),
                         ({"sampler_name": "DPM++ 2M Karras"}, "sampler_name"), ({"width": 65}, "width"),
                         ({"override_settings": {"sd_model_checkpoint": "nope"}}, "override_settings")):
        resp = api.session.post(api.baseurl + "/txt2img", json={"prompt": "x", **FAST, **extra})
        assert resp.status_code == 422, (extra, resp.text)
        assert resp.json()["detail"][0]["loc"][1] == field, resp.text


def test_progress_of_a_long_job_and_interrupt_cancels_it(door):
    api = api_for(door, "erin")
    assert api.get_progress()["state"]["job_count"] == 0
    outcome: dict = {}

    def long_request():
        try:
            outcome["result"] = api_for(door, "erin").txt2img(prompt="a long one", seed=3, batch_size=4, steps=150,
                                                               width=256, height=256)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=long_request)
    thread.start()
    doc = wait_until(lambda: (p := api.get_progress())["state"]["sampling_step"] > 0 and p, "progress shows steps")
    assert doc["state"]["job_count"] == 4 and doc["state"]["sampling_steps"] == 150 and 0 < doc["progress"] < 1
    assert doc["current_image"] is None and doc["eta_relative"] >= 0
    assert api.interrupt() == {}
    thread.join(120)
    assert not thread.is_alive() and "error" not in outcome, outcome
    job = wait_job(sdq_for(door, "erin"), doc["current_task"])
    assert job["state"] == "cancelled" and job["counts"]["succeeded"] < 4
    assert outcome["result"].info["job_id"] == doc["current_task"]
    assert api.get_progress()["state"]["job_count"] == 0


def test_png_info_reads_back_the_infotext(door):
    api = api_for(door, "alice")
    made = api.txt2img(prompt="a lighthouse", seed=99, negative_prompt="blurry", **FAST)
    info = api.png_info(made.image)
    assert "Seed: 99" in info.info and info.parameters["Seed"] == "99"
    assert info.parameters["Prompt"] == "a lighthouse" and info.parameters["Negative prompt"] == "blurry"


def test_a_tenant_past_its_cap_is_refused_in_a1111_shape(door):
    api = api_for(door, "dave")
    resp = api.session.post(api.baseurl + "/txt2img", json={"prompt": "x", "batch_size": 3, "n_iter": 3, **FAST})
    assert resp.status_code == 429 and "limit per tenant" in resp.json()["detail"] and resp.headers["Retry-After"]


def test_auth_basic_and_bearer(door):
    url = door + "/sdapi/v1/options"
    assert requests.get(url, auth=("x", "wrong"), timeout=10).status_code == 401
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Basic" and resp.json()["detail"]
    assert requests.get(url, headers={"Authorization": f"Bearer {TOKENS['bob']}"}, timeout=10).ok
    assert requests.get(url, auth=("whoever", TOKENS["bob"]), timeout=10).ok
    # Basic is for the A1111 door only
    assert requests.get(door + "/v1/jobs", auth=("x", TOKENS["bob"]), timeout=10).status_code == 401


def test_past_the_wait_bound_the_job_id_is_answered_and_the_job_goes_on(idle):
    resp = requests.post(idle + "/sdapi/v1/txt2img", json={"prompt": "waits", **FAST}, timeout=30)
    assert resp.status_code == 408 and resp.json()["job_id"] in resp.json()["detail"]
    assert Client(idle).job(resp.json()["job_id"])["state"] == "queued"


FIELDS = st.sampled_from(["prompt", "negative_prompt", "seed", "steps", "width", "height", "batch_size", "n_iter",
                          "sampler_name", "scheduler", "cfg_scale", "override_settings", "init_images", "mask",
                          "denoising_strength", "alwayson_scripts", "eta", "image", "sd_model_checkpoint", "x"])
VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                                  max_size=3), max_leaves=10)


def test_fuzz_door_bodies_never_answer_5xx(idle):
    session = requests.Session()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(path=st.sampled_from(["txt2img", "img2img", "options", "png-info"]),
           body=st.dictionaries(FIELDS, VALUES, max_size=6) | VALUES)
    def run(path, body):
        data = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
        resp = session.post(f"{idle}/sdapi/v1/{path}", data=data, headers={"Content-Type": "application/json"},
                            timeout=30)
        assert resp.status_code < 500, (path, body, resp.status_code, resp.text[:300])
        if resp.status_code >= 400:
            assert resp.json()["detail"], resp.text[:300]

    run()


def test_hires_fix_runs_a_second_pass_at_the_larger_size(door):
    api = api_for(door, "alice")
    made = api.txt2img(prompt="a tower", seed=5, enable_hr=True, hr_upscaler="Lanczos", hr_scale=2,
                       denoising_strength=0.5, **FAST)
    assert made.image.size == (128, 128)
    assert sdq_for(door, "alice").job(made.info["job_id"])["params"]["hires"]["scale"] == 2
    with pytest.raises(RuntimeError) as err:  # webuiapi's default upscaler is A1111's latent one
        api.txt2img(prompt="a tower", enable_hr=True, **FAST)
    assert json.loads(err.value.args[1])["detail"][0]["loc"] == ["body", "hr_upscaler"]


# Translation alone (no services).

@pytest.mark.unit
def test_lora_tags_leave_the_prompt_and_emphasis_stays_text():
    from producer.doors.a1111_prompt import split_prompt
    from sdq.exceptions import InvalidInput

    text, loras = split_prompt("(a red:1.2) barn, <lora:tiny-lora:0.5> [sunset] <lyco:tiny-lora-kohya>", ())
    assert text == "(a red:1.2) barn, [sunset]"
    assert loras == [{"name": "builtin:tiny-lora", "scale": 0.5}, {"name": "builtin:tiny-lora-kohya", "scale": 1.0}]
    assert split_prompt("<lora:builtin:tiny-lora:0.25>", ())[1] == [{"name": "builtin:tiny-lora", "scale": 0.25}]
    assert split_prompt("(word:1.3) AND other BREAK x", ()) == ("(word:1.3) AND other BREAK x", [])
    for bad in ("<hypernet:x:1>", "<lora:nope:1>", "<lora:tiny-lora:0.5:1>", "<lora:tiny-lora> <lora:tiny-lora>"):
        with pytest.raises(InvalidInput) as err:
            split_prompt(bad, ())
        assert err.value.field == "prompt"


@pytest.mark.unit
def test_webuiapi_defaults_are_accepted_and_mean_what_they_mean_in_a1111():
    from producer.doors.a1111_schema import Img2ImgIn, Txt2ImgIn
    from producer.doors.a1111_translate import a1111_field, submit_body

    sent = {"enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0,
            "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None,
            "hr_prompt": "", "hr_negative_prompt": "", "denoising_strength": 0.7, "firstphase_width": 0,
            "firstphase_height": 0, "prompt": "p", "styles": [], "seed": 9, "subseed": -1, "subseed_strength": 0.0,
            "seed_resize_from_h": 0, "seed_resize_from_w": 0, "batch_size": 2, "n_iter": 3, "steps": 4,
            "cfg_scale": 7.0, "width": 64, "height": 64, "restore_faces": False, "tiling": False,
            "do_not_save_samples": False, "do_not_save_grid": False, "negative_prompt": "n", "eta": 1.0,
            "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
            "override_settings_restore_afterwards": True, "sampler_name": "Euler a", "scheduler": "automatic",
            "sampler_index": "Euler a", "script_name": None, "script_args": [], "send_images": True,
            "save_images": False, "alwayson_scripts": {}}
    body = submit_body(Txt2ImgIn.model_validate(sent), "builtin:tiny-sd", ["builtin:tiny-sd"], ())
    assert body == {"prompts": ["p"], "model": "builtin:tiny-sd", "pipeline": "txt2img", "params": {
        "steps": 4, "guidance_scale": 7.0, "width": 64, "height": 64, "scheduler": "euler_a", "negative_prompt": "n",
        "images_per_prompt": 6, "seed": 9}}
    ddim = submit_body(Txt2ImgIn.model_validate({**sent, "sampler_name": "DDIM", "eta": None}), "builtin:tiny-sd",
                       ["builtin:tiny-sd"], ())
    assert ddim["params"]["scheduler"] == "ddim" and "seed" in ddim["params"]
    inpaint = Img2ImgIn.model_validate({k: v for k, v in sent.items() if not k.startswith(("hr_", "enable_hr",
                                                                                            "firstphase"))}
                                       | {"init_images": ["x"], "mask": "y", "mask_blur": 4, "inpainting_fill": 0,
                                          "inpaint_full_res": True, "denoising_strength": 0.75})
    assert submit_body(inpaint, "builtin:tiny-sd", ["builtin:tiny-sd"], ())["pipeline"] == "inpaint"
    assert a1111_field("params.guidance_scale") == "cfg_scale" and a1111_field("params.loras[0].name") == "prompt"


@pytest.mark.unit
@pytest.mark.parametrize("model,extra,expected", [
    ("builtin:tiny-sd", {}, {"guidance_scale": 7.0}),
    ("builtin:tiny-sd3", {}, {"guidance_scale": 7.0}),
    ("builtin:tiny-z-image", {}, {"guidance_scale": 7.0}),
    ("builtin:tiny-z-image-turbo", {}, {}),  # run without guidance: cfg_scale changes nothing
    ("builtin:tiny-flux-schnell", {}, {}),
    ("builtin:tiny-flux", {}, {}),  # no negative prompt: one pass, the family's distilled guidance
    ("builtin:tiny-flux", {"negative_prompt": "blur", "distilled_cfg_scale": 2.5},
     {"true_cfg_scale": 7.0, "guidance_scale": 2.5}),
    ("builtin:tiny-qwen-image", {"negative_prompt": " "}, {"true_cfg_scale": 7.0}),
    ("builtin:tiny-qwen-image", {"negative_prompt": " ", "cfg_scale": 1.0}, {}),
])
def test_cfg_scale_means_what_forge_makes_of_it_per_family(model, extra, expected):
    from producer.doors.a1111_schema import Txt2ImgIn
    from producer.doors.a1111_translate import submit_body

    body = Txt2ImgIn.model_validate({"prompt": "p", "steps": 4, "width": 64, "height": 64, **extra})
    params = submit_body(body, model, [model], ())["params"]
    assert {k: params[k] for k in ("guidance_scale", "true_cfg_scale") if k in params} == expected


@pytest.mark.unit
def test_distilled_cfg_scale_on_a_family_without_that_input_is_a_422_naming_it():
    from producer.doors.a1111_schema import Txt2ImgIn
    from producer.doors.a1111_translate import submit_body
    from sdq.exceptions import InvalidInput

    with pytest.raises(InvalidInput) as err:
        submit_body(Txt2ImgIn.model_validate({"prompt": "p", "distilled_cfg_scale": 3.5}), "builtin:tiny-sd",
                    ["builtin:tiny-sd"], ())
    assert err.value.field == "distilled_cfg_scale"


def test_webuiapi_defaults_run_a_timestep_distilled_flux_model(door):
    """webuiapi always sends `cfg_scale` (7 by default): a schnell-type model, which takes no guidance, runs."""
    api = api_for(door, "alice")
    result = api.txt2img(prompt="a red kite", seed=5, width=64, height=64, steps=2,
                         override_settings={"sd_model_checkpoint": "builtin:tiny-flux-schnell"})
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    job = sdq_for(door, "alice").job(result.info["job_id"])
    assert job["state"] == "succeeded" and job["model"] == "builtin:tiny-flux-schnell"
    assert job["params"]["guidance_scale"] == 0 and job["params"].get("true_cfg_scale") is None


@pytest.mark.serial
def test_many_waiting_requests_leave_the_api_answering(stack_factory):
    """60 txt2img requests waiting on jobs no worker takes: the rest of the API answers meanwhile."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    server = stack_factory("a1111-wait", env={"SDQ_A1111_WAIT_SECONDS": "20"}).env["SDQ_SERVER"]
    session = requests.Session()
    job_id = session.post(server + "/v1/jobs", json={"prompts": ["probe"], "params": FAST}, timeout=10).json()["id"]

    def waiting(_: int) -> requests.Response:
        return requests.post(server + "/sdapi/v1/txt2img", json={"prompt": "waits", **FAST}, timeout=60)

    with ThreadPoolExecutor(60) as pool:
        answers = pool.map(waiting, range(60))
        wait_until(lambda: session.get(server + "/v1/jobs?limit=1", timeout=10).json()["total"] >= 61,
                   "every waiting request submitted its job", 30)
        latencies = []
        for _ in range(50):
            start = time.monotonic()
            assert session.get(f"{server}/v1/jobs/{job_id}?limit=1", timeout=10).ok
            latencies.append(time.monotonic() - start)
        assert session.get(server + "/sdapi/v1/progress", timeout=10).ok
        answers = list(answers)
    latencies.sort()
    assert latencies[int(len(latencies) * 0.99) - 1] < 0.5, latencies[-5:]
    assert {a.status_code for a in answers} == {408} and len({a.json()["job_id"] for a in answers}) == 60


@pytest.mark.unit
def test_a_bad_wait_bound_stops_the_producer_at_start(monkeypatch):
    from producer.app import create_app
    from sdq.exceptions import ConfigError

    monkeypatch.setenv("SDQ_A1111_WAIT_SECONDS", "soon")
    with pytest.raises(ConfigError, match="SDQ_A1111_WAIT_SECONDS"):
        create_app()


def test_a_request_sent_again_with_its_idempotency_key_answers_the_first_job(door):
    headers = {"Authorization": f"Bearer {TOKENS['alice']}", "Idempotency-Key": "a1111-retry-1"}
    body = {"prompt": "a paper boat", "seed": 5, **FAST}
    first = requests.post(door + "/sdapi/v1/txt2img", json=body, headers=headers, timeout=120)
    again = requests.post(door + "/sdapi/v1/txt2img", json=body, headers=headers, timeout=120)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert json.loads(again.json()["info"])["job_id"] == json.loads(first.json()["info"])["job_id"]
    reused = requests.post(door + "/sdapi/v1/txt2img", json={**body, "prompt": "a paper plane"}, headers=headers,
                           timeout=120)
    assert reused.status_code == 422 and "Idempotency-Key" in reused.text
