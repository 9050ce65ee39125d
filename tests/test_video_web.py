"""Video on the web page, in a real headless Chromium (Debian's, driven by Playwright): the form submits a
video job with its frames and frame rate, and the job page plays a finished clip."""
from __future__ import annotations

import pytest

from tests.conftest import wait_job
from tests.test_web_browser import WAIT_MS, _job_id, browser, expect, page, sync_api  # noqa: F401 (fixtures)


def test_the_form_submits_a_video_job_with_its_frames_and_fps(page, client):
    page.goto("/")
    expect(page.locator("#video-set")).to_be_hidden()  # an image pipeline has no frames
    page.get_by_label("Model", exact=True).fill("builtin:tiny-ltx")
    page.get_by_label("Pipeline", exact=True).select_option("txt2video")
    expect(page.locator("#video-set")).to_be_visible()
    expect(page.locator("#init-set")).to_be_hidden()  # text to video takes no init image
    page.get_by_label("Prompts").fill("a lantern swinging")
    for name, value in (("Width", "96"), ("Height", "64"), ("Steps", "2"), ("Seed", "5"),
                        ("Frames", "9"), ("Frames per second", "6")):
        page.get_by_label(name, exact=True).fill(value)
    page.get_by_role("button", name="Generate").click()
    doc = wait_job(client, _job_id(page), timeout=300)
    assert doc["state"] == "succeeded", [it.get("error") for it in doc["items"]]
    assert (doc["params"]["frames"], doc["params"]["fps"]) == (9, 6), doc["params"]
    assert doc["items"][0]["video_key"].endswith(".mp4")
    expect(page.get_by_label("Video 0: a lantern swinging")).to_be_visible(timeout=WAIT_MS)


def test_the_job_page_plays_a_finished_video(browser, stack, client):
    body = {"model": "builtin:tiny-ltx", "pipeline": "txt2video", "prompts": ["waves on a beach"],
            "params": {"frames": 17, "fps": 8, "width": 96, "height": 64, "steps": 2, "seed": 4}}
    doc = wait_job(client, client.submit(body)["id"], timeout=300)
    assert doc["state"] == "succeeded", [it.get("error") for it in doc["items"]]
    ctx = browser.new_context(viewport={"width": 1100, "height": 900}, base_url=stack.env["SDQ_SERVER"])
    page = ctx.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"/#/jobs/{doc['id']}")
        video = page.get_by_label("Video 0: waves on a beach")
        expect(video).to_be_visible(timeout=WAIT_MS)
        item = doc["items"][0]
        assert video.evaluate("v => v.src").split("?")[0].endswith(item["video_key"])
        assert video.evaluate("v => v.poster").split("?")[0].endswith(item["key"])  # the first frame as PNG
        # Chromium decodes it: playing moves its clock, the clip's size and length are known, no media error.
        video.evaluate("v => v.play()")
        state = "v => [v.readyState, v.currentTime, v.paused, v.error && v.error.message]"
        try:
            page.wait_for_function("v => v.readyState >= 2 && v.currentTime > 0.2 && !v.paused",
                                   arg=video.element_handle(), timeout=WAIT_MS)
        except sync_api.TimeoutError:
            pytest.fail(f"the video did not play: {video.evaluate(state)}")
        assert video.evaluate("v => [v.videoWidth, v.videoHeight, v.error]") == [96, 64, None]
        assert abs(video.evaluate("v => v.duration") - 17 / 8) < 0.2
    finally:
        ctx.close()
    assert errors == [], f"browser console errors: {errors}"
