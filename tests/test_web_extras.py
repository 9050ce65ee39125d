"""The submit form's inpaint, ControlNet and hires-fix fields in a real headless Chromium against the real stack."""
from __future__ import annotations

import io

from PIL import Image

from tests.conftest import wait_job
from tests.test_pipelines import png, sketch
from tests.test_web_browser import WAIT_MS, _job_id, browser, expect, page  # noqa: F401 - fixtures

__all__ = ["browser", "page"]


def test_the_form_submits_a_controlnet_hires_job(page, client, store, tmp_path):
    control = tmp_path / "control.png"
    control.write_bytes(png(sketch((64, 64), seed=8)))
    page.goto("/")
    page.get_by_label("Prompts").fill("a lighthouse at dusk")
    for label, value in (("Width", "64"), ("Height", "64"), ("Steps", "3"), ("Seed", "12")):
        page.get_by_label(label, exact=True).fill(value)
    expect(page.locator("#controlnet-set")).to_be_visible()  # txt2img takes both
    page.get_by_label("Guide the image with a control image").check()
    page.get_by_label("Control image (PNG, JPEG, WebP)").set_input_files(str(control))
    page.get_by_label("ControlNet weight").fill("0.8")
    page.get_by_label("Enlarge, then denoise again at the larger size").check()
    page.get_by_label("Upscale by").fill("1.5")
    page.get_by_role("button", name="Generate").click()
    doc = wait_job(client, _job_id(page), timeout=WAIT_MS / 1000)
    assert doc["state"] == "succeeded", doc
    item = doc["items"][0]
    assert item["params"]["controlnet"]["model"] == "builtin:tiny-controlnet"
    assert item["params"]["controlnet"]["scale"] == 0.8 and item["params"]["controlnet"]["image"].startswith("uploads/")
    assert item["params"]["hires"] == {"scale": 1.5, "strength": 0.7, "steps": 3}
    assert Image.open(io.BytesIO(store.get(item["key"]))).size == (96, 96)


def test_inpaint_shows_a_mask_field_and_hides_the_hires_fix(page):
    page.goto("/")
    expect(page.locator("#mask-field")).to_be_hidden()
    page.get_by_label("Pipeline").select_option("inpaint")
    expect(page.get_by_label("Mask (white is repainted)")).to_be_visible()
    expect(page.locator("#hires-set")).to_be_hidden()
    expect(page.locator("#controlnet-set")).to_be_visible()
    page.get_by_label("Pipeline").select_option("upscale")
    expect(page.locator("#controlnet-set")).to_be_hidden()


def test_a_controlnet_error_shows_next_to_its_field(page):
    page.goto("/")
    page.get_by_label("Prompts").fill("x")
    page.get_by_label("Guide the image with a control image").check()
    page.get_by_role("button", name="Generate").click()  # no control image chosen
    box = page.locator('[data-field="params.controlnet.image"] .error')
    expect(box).to_contain_text("image")
    page.console_errors.clear()  # the 422 is logged by the browser


def test_the_form_submits_an_inpaint_job_with_its_mask(page, client, tmp_path):
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    init.write_bytes(png(sketch((64, 64), seed=4)))
    mask.write_bytes(png(Image.new("L", (64, 64), 255)))
    page.goto("/")
    page.get_by_label("Prompts").fill("a stone bridge")
    page.get_by_label("Steps", exact=True).fill("3")
    page.get_by_label("Pipeline").select_option("inpaint")
    page.get_by_label("Image (PNG, JPEG, WebP)", exact=True).set_input_files(str(init))
    page.get_by_label("Mask (white is repainted)").set_input_files(str(mask))
    page.get_by_label("Width", exact=True).fill("")
    page.get_by_label("Height", exact=True).fill("")
    page.get_by_role("button", name="Generate").click()
    doc = wait_job(client, _job_id(page), timeout=WAIT_MS / 1000)
    assert doc["state"] == "succeeded", doc
    assert doc["pipeline"] == "inpaint" and doc["items"][0]["images"]["mask_image"].startswith("uploads/")


def test_the_form_submits_a_lora_job(page, client):
    page.goto("/")
    page.get_by_label("Prompts").fill("a lighthouse with a lora")
    for label, value in (("Width", "64"), ("Height", "64"), ("Steps", "3"), ("Seed", "5")):
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_label("LoRA adapters (NAME or NAME:SCALE, comma-separated)").fill(
        "builtin:tiny-lora:0.75, builtin:tiny-lora-kohya")
    page.get_by_role("button", name="Generate").click()
    doc = wait_job(client, _job_id(page), timeout=WAIT_MS / 1000)
    assert doc["state"] == "succeeded", doc
    assert doc["items"][0]["params"]["loras"] == [{"name": "builtin:tiny-lora", "scale": 0.75},
                                                  {"name": "builtin:tiny-lora-kohya", "scale": 1.0}]


def test_an_unknown_lora_shows_its_error_next_to_the_field(page):
    page.goto("/")
    page.get_by_label("Prompts").fill("x")
    page.get_by_label("LoRA adapters (NAME or NAME:SCALE, comma-separated)").fill("no-such-lora")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator('[data-field="params.loras"] .error')).to_contain_text("no-such-lora")
    page.console_errors.clear()  # the 422 is logged by the browser
