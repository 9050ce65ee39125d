"""POST /v1/uploads and the submit-time checks of init images and image-pipeline parameters."""
from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from producer.uploads import MAX_UPLOAD_BYTES


def image_bytes(fmt: str, size=(64, 48), seed: int = 0) -> bytes:
    rs = np.random.RandomState(seed)
    img = Image.fromarray((rs.rand(size[1], size[0], 3) * 255).astype("uint8"))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` with a tiny (bogus) IDAT: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def upload(server: str, data: bytes, raw: bool = False, content_type: str = "image/png"):
    if raw:
        return requests.post(server + "/v1/uploads", data=data, headers={"Content-Type": content_type}, timeout=30)
    return requests.post(server + "/v1/uploads", files={"file": ("x.img", data)}, timeout=30)


@pytest.fixture(scope="module")
def server(stack) -> str:
    return stack.env["SDQ_SERVER"]


@pytest.mark.parametrize("fmt, raw", [("PNG", False), ("JPEG", True), ("WEBP", False)])
def test_upload_is_stored_as_png_under_a_server_key(server, store, fmt, raw):
    data = image_bytes(fmt)
    resp = upload(server, data, raw=raw, content_type=f"image/{fmt.lower()}")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["key"].startswith("uploads/") and body["key"].endswith(".png")
    assert (body["width"], body["height"]) == (64, 48)
    stored = Image.open(io.BytesIO(store.get(body["key"])))
    assert stored.format == "PNG" and stored.size == (64, 48) and stored.mode == "RGB"
    original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(np.asarray(stored), original)


def test_two_uploads_of_the_same_bytes_get_different_keys(server):
    data = image_bytes("PNG")
    assert upload(server, data).json()["key"] != upload(server, data).json()["key"]


@pytest.mark.parametrize("data, status, words", [
    (b"this is not an image at all", 415, "not a PNG, JPEG or WebP"),
    (image_bytes("GIF"), 415, "not a PNG, JPEG or WebP"),
    (image_bytes("BMP"), 415, "not a PNG, JPEG or WebP"),
    (image_bytes("PNG", (256, 256))[:300], 422, "truncated or corrupt"),
    (b"", 400, "empty"),
])
def test_bad_uploads_are_4xx_naming_the_problem(server, data, status, words):
    resp = upload(server, data)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["field"] == "file" and words in err["message"]


def test_oversized_upload_is_refused(server):
    data = image_bytes("PNG", (16, 16)) + b"\0" * (MAX_UPLOAD_BYTES + 1)
    resp = upload(server, data, raw=True)
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["field"] == "file" and str(MAX_UPLOAD_BYTES) in resp.json()["error"]["message"]


@pytest.mark.parametrize("raw", [False, True])
def test_decompression_bomb_header_is_refused_before_decoding(server, raw):
    data = png_header_only(30000, 30000)
    assert len(data) < 2000
    t0 = time.monotonic()
    resp = upload(server, data, raw=raw)
    assert time.monotonic() - t0 < 5
    assert resp.status_code == 413, resp.text
    err = resp.json()["error"]
    assert err["field"] == "file" and err["code"] == "too_large" and "pixels" in err["message"]


def test_multipart_without_file_field(server):
    resp = requests.post(server + "/v1/uploads", files={"image": ("x.png", image_bytes("PNG"))}, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "file"


@pytest.fixture(scope="module")
def init_key(server) -> str:
    return upload(server, image_bytes("PNG", (64, 64))).json()["key"]


@pytest.fixture(scope="module")
def big_key(server) -> str:
    return upload(server, image_bytes("PNG", (512, 512))).json()["key"]


def bad_cases(init_key: str, big_key: str):
    one = {"prompts": ["a"]}
    return [
        ({**one, "pipeline": "img2img"}, "params.init_image", "needs an init_image"),
        ({"items": [{"prompt": "a"}, {"prompt": "b", "init_image": init_key}], "pipeline": "depth2img",
          "model": "builtin:tiny-depth"},
         "items[0].init_image", "needs an init_image"),
        ({**one, "pipeline": "img2img", "params": {"init_image": "jobs/x/00000.png"}}, "params.init_image", "uploads/"),
        ({**one, "pipeline": "img2img", "params": {"init_image": "uploads/../jobs/x.png"}}, "params.init_image",
         "uploads/"),
        ({**one, "pipeline": "img2img", "params": {"init_image": "uploads/0123abcd.png"}}, "params.init_image",
         "no upload"),
        ({"items": [{"prompt": "a", "init_image": "uploads/nope.png"}], "pipeline": "img2img"},
         "items[0].init_image", "no upload"),
        ({**one, "params": {"init_image": init_key}}, "params.init_image", "takes no init_image"),
        ({**one, "pipeline": "img2img", "params": {"init_image": init_key, "strength": 1.5}}, "params.strength",
         "less than or equal to 1"),
        ({**one, "pipeline": "img2img", "params": {"init_image": init_key, "strength": -0.1}}, "params.strength",
         "greater than or equal to 0"),
        ({"items": [{"prompt": "a", "strength": 2}], "pipeline": "img2img", "params": {"init_image": init_key}},
         "items[0].strength", "less than or equal to 1"),
        ({**one, "params": {"scheduler": "k_dpm_9"}}, "params.scheduler", "unknown scheduler 'k_dpm_9'"),
        ({"items": [{"prompt": "a", "scheduler": "warp"}]}, "items[0].scheduler", "unknown scheduler 'warp'"),
        ({**one, "pipeline": "upscale", "model": "builtin:tiny-upscaler",
          "params": {"init_image": init_key, "noise_level": 400}}, "params.noise_level", "350"),
        ({**one, "pipeline": "upscale", "model": "builtin:tiny-upscaler", "params": {"init_image": big_key}},
         "params.width", "2048x2048"),
        ({**one, "pipeline": "upscale", "params": {"init_image": init_key}}, "pipeline", "cannot run pipeline"),
        ({**one, "params": {"width": 64, "height": 64, "watermark": True}}, "params.watermark", "256x256"),
        ({**one, "params": {"images_per_prompt": 0}}, "params.images_per_prompt", "greater than or equal to 1"),
    ]


@pytest.mark.parametrize("case", range(17))
def test_bad_image_job_is_a_4xx_naming_the_field(server, init_key, big_key, case):
    body, field, words = bad_cases(init_key, big_key)[case]
    resp = requests.post(server + "/v1/jobs", json=body, timeout=10)
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["field"] == field, err
    assert words in err["message"], err["message"]


def test_bad_cases_are_all_parametrized(init_key, big_key):
    assert len(bad_cases(init_key, big_key)) == 17
