"""Video jobs through the real queue on the tiny Wan and LTX-Video built-ins: txt2video and img2video make an
MP4 with the asked frames and fps (read back with PyAV) whose frames are a direct diffusers call's for the
same seed, and a poster PNG equal to the first frame; bad frames, fps and a missing init image are refused
at submit naming the field; `sdq download` writes the MP4s; the result cache serves a clip again."""
from __future__ import annotations

import io
import json
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
import pytest
import requests
from PIL import Image

from cli.client import Client
from cli.jobs import download
from sdq.infotext import parse_infotext
from sdq.sources import builtin_path
from tests.conftest import wait_job, wait_until
from tests.test_pipelines import png, sketch
from workers.running.video import encode_mp4, mp4_comment

CASES = {  # (model, pipeline) -> (diffusers class of a direct run, frames, width, height)
    ("builtin:tiny-wan", "txt2video"): ("WanPipeline", 5, 64, 48),
    ("builtin:tiny-wan-i2v", "img2video"): ("WanImageToVideoPipeline", 5, 64, 48),
    ("builtin:tiny-ltx", "txt2video"): ("LTXPipeline", 9, 96, 64),
    ("builtin:tiny-ltx", "img2video"): ("LTXImageToVideoPipeline", 9, 96, 64),
}
GUIDANCE = {"tiny-wan": 5.0, "tiny-wan-i2v": 5.0, "tiny-ltx": 3.0}
"""The family's default guidance the producer fills in (the direct call passes the same)."""

STEPS = 3
PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def vstack(stack_factory):
    st = stack_factory("video")
    st.worker("w-video", "--device", "cpu", "--threads", "1")
    return st


@pytest.fixture(scope="module")
def vclient(vstack) -> Client:
    return Client(vstack.env["SDQ_SERVER"])


@lru_cache(maxsize=None)
def _pipe(models_dir: Path, name: str, cls: str):
    import diffusers
    import torch

    base_cls = {"LTXImageToVideoPipeline": "LTXPipeline"}.get(cls, cls)  # tiny-ltx's folder is an LTXPipeline
    pipe = getattr(diffusers, base_cls).from_pretrained(builtin_path(models_dir, name), dtype=torch.float32)
    if base_cls != cls:
        pipe = getattr(diffusers, cls).from_pipe(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def direct(models_dir: Path, model: str, pipeline: str, seed: int, fps: float, image=None) -> np.ndarray:
    """The clip plain diffusers makes (uint8, one thread like the worker)."""
    import torch

    torch.set_num_threads(1)
    name = model.removeprefix("builtin:")
    cls, frames, width, height = CASES[(model, pipeline)]
    pipe = _pipe(models_dir, name, cls)
    text: dict = {"prompt": PROMPT}
    extra = {"frame_rate": fps} if cls.startswith("LTX") else {}
    if image is not None:
        extra["image"] = image
    out = pipe(**text, **extra, num_frames=frames, width=width, height=height, num_inference_steps=STEPS,
               guidance_scale=GUIDANCE[name], generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return (np.clip(out.frames[0], 0, 1) * 255).round().astype(np.uint8)


def decode(data: bytes) -> tuple[np.ndarray, float, dict]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        return frames, float(stream.average_rate), dict(container.metadata)


def submit_video(client: Client, model: str, pipeline: str, seed: int, fps: float, image=None, **params) -> dict:
    _, frames, width, height = CASES[(model, pipeline)]
    params = {"frames": frames, "fps": fps, "width": width, "height": height, "steps": STEPS, "seed": seed, **params}
    if image is not None:
        params["init_image"] = client.upload(png(image), "first.png")["key"]
    doc = wait_job(client, client.submit({"model": model, "pipeline": pipeline, "prompts": [PROMPT],
                                          "params": params})["id"], timeout=300)
    assert doc["state"] == "succeeded", [it.get("error") for it in doc["items"]]
    return doc


@pytest.mark.parametrize("model, pipeline", list(CASES))
def test_each_video_pipeline_makes_the_asked_clip_equal_to_direct_diffusers(vclient, store, models_dir, model,
                                                                             pipeline):
    cls, frames, width, height = CASES[(model, pipeline)]
    fps = 12 if "wan" in model else 24
    image = sketch((width, height), seed=5) if pipeline == "img2video" else None
    doc = submit_video(vclient, model, pipeline, seed=21, fps=fps, image=image)
    item = doc["items"][0]
    job_id = doc["id"]
    assert item["video_key"] == f"jobs/{job_id}/00000.mp4" and item["key"] == f"jobs/{job_id}/00000.png"
    assert item["video_url"] and item["params"]["frames"] == frames and item["params"]["fps"] == fps
    clip, rate, meta = decode(store.get(item["video_key"]))
    assert clip.shape == (frames, height, width, 3) and rate == fps
    info = parse_infotext(meta["comment"])  # the parameters ride in the MP4's metadata
    assert (int(info["Frames"]), float(info["FPS"]), int(info["Seed"]), info["Pipeline"]) == (frames, fps, 21, pipeline)
    want = direct(models_dir, model, pipeline, 21, fps, image)
    poster = np.asarray(Image.open(io.BytesIO(store.get(item["key"]))).convert("RGB"))
    assert np.array_equal(poster, want[0])  # the poster is lossless: exactly the first frame
    # Every frame: H.264 in 4:2:0 is lossy (random weights make noise-like frames, hard on chroma), so the
    # direct frames go through the same encoder; the same frames may not give the same bytes (see video.py).
    same = np.abs(clip.astype(float) - decode(encode_mp4(want, fps))[0]).mean()
    assert same < 0.5
    other = direct(models_dir, model, pipeline, 22, fps, image)
    assert np.abs(clip.astype(float) - decode(encode_mp4(other, fps))[0]).mean() > 10 * max(same, 0.2)
    manifest = json.loads(store.get(f"jobs/{job_id}/manifest.json"))
    assert manifest["items"][0]["video_key"] == item["video_key"]
    assert manifest["items"][0]["params"]["frames"] == frames


def test_family_defaults_fill_frames_fps_and_size_and_the_grid_shows_the_posters(vclient, store):
    """A tiny built-in with nothing asked: its family's frame rule, default fps and its small size; the
    job's contact sheet is made of the clips' posters."""
    doc = wait_job(vclient, vclient.submit({"model": "builtin:tiny-ltx", "pipeline": "txt2video", "prompts": ["sea"],
                                            "params": {"steps": 2, "seed": 3, "images_per_prompt": 2,
                                                       "grid": True}})["id"], timeout=300)
    assert doc["state"] == "succeeded", [it.get("error") for it in doc["items"]]
    params = doc["items"][0]["params"]
    assert (params["frames"], params["fps"], params["width"], params["height"]) == (9, 25, 64, 64)
    assert (params["scheduler"], params["guidance_scale"]) == ("flow_euler", 3.0)
    clip, rate, _ = decode(store.get(doc["items"][0]["video_key"]))
    assert clip.shape == (9, 64, 64, 3) and rate == 25
    doc = wait_until(lambda: (d := vclient.job(doc["id"]))["grid"] and d, "the grid", 120)
    grid = np.asarray(Image.open(io.BytesIO(requests.get(doc["grid"], timeout=30).content)).convert("RGB"))
    posters = [np.asarray(Image.open(io.BytesIO(store.get(it["key"]))).convert("RGB")) for it in doc["items"]]
    assert any((grid[y:y + 64, x:x + 64] == posters[1]).all()
               for y in range(grid.shape[0] - 63) for x in range(grid.shape[1] - 63))


@pytest.mark.parametrize("model, pipeline, params, field, value", [
    ("builtin:tiny-wan", "txt2video", {"frames": 6}, "params.frames", "6"),
    ("builtin:tiny-ltx", "txt2video", {"frames": 5}, "params.frames", "5"),
    ("builtin:tiny-wan", "txt2video", {"frames": 165}, "params.frames", "165"),
    ("builtin:tiny-wan", "txt2video", {"fps": 0}, "params.fps", "0"),
    ("builtin:tiny-ltx", "txt2video", {"fps": 500}, "params.fps", "500"),
    ("builtin:tiny-ltx", "txt2video", {"width": 48}, "params.width", "48"),
    ("builtin:tiny-wan-i2v", "img2video", {}, "params.init_image", "init_image"),
    ("builtin:tiny-sd", "txt2img", {"frames": 5}, "params.frames", "5"),
    ("builtin:tiny-sd", "txt2video", {}, "pipeline", "txt2video"),
    ("builtin:tiny-wan", "img2video", {}, "pipeline", "img2video"),  # a T2V model: its weights say which
    ("builtin:tiny-wan-i2v", "txt2video", {}, "pipeline", "txt2video"),
])
def test_bad_video_requests_are_422s_naming_the_field(vclient, model, pipeline, params, field, value):
    error = refused(vclient, {"model": model, "pipeline": pipeline, "prompts": ["x"], "params": {"steps": 2, **params}})
    assert error["field"] == field and value in error["message"], error


def test_a_per_item_bad_frame_count_names_the_item(vclient):
    error = refused(vclient, {"model": "builtin:tiny-wan", "pipeline": "txt2video",
                              "items": [{"prompt": "a"}, {"prompt": "b", "frames": 7}]})
    assert error["field"] == "items[1].frames" and "7" in error["message"], error


def refused(client: Client, body: dict) -> dict:
    resp = client.session.post(f"{client.server}/v1/jobs", json=body)
    assert resp.status_code == 422, resp.text
    return resp.json()["error"]


def test_download_writes_the_mp4s_and_the_cache_serves_a_clip_again(vclient, store, tmp_path):
    model, pipeline = "builtin:tiny-wan", "txt2video"
    first = submit_video(vclient, model, pipeline, seed=40, fps=8)
    again = submit_video(vclient, model, pipeline, seed=40, fps=8)
    item = again["items"][0]
    assert item["cached"] and item["video_key"] == f"jobs/{again['id']}/00000.mp4"
    assert store.get(item["video_key"]) == store.get(first["items"][0]["video_key"])
    out = download(vclient, again["id"], tmp_path / "dl", quiet=True)
    mp4 = (out / "00000.mp4").read_bytes()
    assert mp4 == store.get(item["video_key"]) and (out / "00000.png").exists()
    clip, rate, _ = decode(mp4)
    assert clip.shape[0] == 5 and rate == 8
    assert '<video src="00000.mp4"' in (out / "index.html").read_text(encoding="utf-8")
    assert "Frames: 5" in mp4_comment(mp4)


@pytest.fixture(scope="module")
def vpool(stack_factory):
    """Two fault-enabled workers on a stack with short recovery timings (`tests.test_faults`)."""
    from tests.test_faults import FAST_RECOVERY, Pool

    st = stack_factory("video-faults", env=FAST_RECOVERY)
    pool = Pool(st)
    pool.fill()
    yield pool
    st.stop()


@pytest.mark.parametrize("point", ["step", "uploaded"])
def test_a_worker_killed_mid_video_gives_it_back_and_it_finishes_once(vpool, store, point):
    """SIGKILL after a denoising step's progress was counted, or after the clip and its poster were stored
    but before the item was recorded: the other worker makes the clip, which is stored once (one MP4, one
    poster), counted once, with the asked frames."""
    from cli.services import wait_for
    from sdq.state.keys import FINALIZE_KEY
    from sdq.state.store import JobStore
    from tests.support.records import undeclared_fields
    from tests.test_faults import LONG, RULES

    client = Client(vpool.stack.env["SDQ_SERVER"])
    vpool.r.delete(RULES)
    for key in vpool.r.scan_iter("sdq:debug:*"):
        vpool.r.delete(key)
    vpool.fill()  # two live workers again after the last test's kill
    vpool.r.hset(RULES, point, "pause")
    job_id = client.submit({"model": "builtin:tiny-wan", "pipeline": "txt2video", "prompts": [PROMPT],
                            "params": {"frames": 5, "fps": 8, "width": 64, "height": 48,
                                       "steps": LONG if point == "step" else 4, "seed": 9,
                                       "cache": False}})["id"]
    victim = vpool.hit(point)
    vpool.r.delete(RULES)
    vpool.kill(victim)
    vpool.release(point)
    doc = wait_job(client, job_id, timeout=300)
    assert doc["state"] == "succeeded", [(it["state"], it["error"]) for it in doc["items"]]
    item = doc["items"][0]
    assert item["worker"] != victim and item["attempts"] == 2, item
    steps = LONG if point == "step" else 4
    assert doc["counts"]["succeeded"] == 1 and doc["steps"] == {"done": steps, "total": steps}
    assert undeclared_fields(vpool.r, job_id) == set()
    assert JobStore(vpool.r).get(job_id).steps_done == steps
    wait_for(lambda: vpool.r.zscore(FINALIZE_KEY, job_id) is None, "finalisation done", 60)
    keys = [k for k in store.keys(f"jobs/{job_id}/") if "/thumbs/" not in k]
    assert keys == [f"jobs/{job_id}/00000.mp4", f"jobs/{job_id}/00000.png", f"jobs/{job_id}/manifest.json"]
    clip, rate, _ = decode(store.get(item["video_key"]))
    assert clip.shape == (5, 48, 64, 3) and rate == 8
