"""The web page in a real headless Chromium (Debian's, driven by Playwright) against the real stack."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import wait_job

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parent.parent / "docs"
SCREENSHOT = DOCS / "web-job.png"
FLEET_SCREENSHOT = DOCS / "web-fleet.png"
WAIT_MS = 120_000
"""Generous deadline for anything that waits on the worker."""

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is missing: make install (dev extra)")
if not shutil.which(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: `make test-deps` installs Debian's chromium", allow_module_level=True)
expect = sync_api.expect


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, stack):
    """A fresh tab on the shared stack; fails the test if the page logs any error."""
    ctx = browser.new_context(viewport={"width": 1100, "height": 900}, base_url=stack.env["SDQ_SERVER"])
    pg = ctx.new_page()
    errors: list[str] = []
    pg.console_errors = errors  # a test that provokes an expected error removes it from here
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    ctx.close()
    assert errors == [], f"browser console errors: {errors}"


def _job_id(page) -> str:
    page.wait_for_url(re.compile(r".*#/jobs/[0-9a-z]+$"), timeout=30_000)
    return page.url.rsplit("/", 1)[-1]


def test_submit_three_prompts_and_watch_the_gallery_fill(page):
    prompts = ["a red <b>fox</b> & friends", "a blue bird", "a green hill"]
    page.goto("/")
    page.get_by_label("Prompts").fill("\n".join(prompts))
    page.get_by_label("Width", exact=True).fill("64")
    page.get_by_label("Height", exact=True).fill("64")
    page.get_by_label("Steps", exact=True).fill("4")
    page.get_by_label("Seed", exact=True).fill("31")
    page.get_by_role("button", name="Generate").click()
    _job_id(page)
    expect(page.locator("#job-progress-text")).to_contain_text("100%", timeout=WAIT_MS)
    thumbs = page.locator("#gallery img")
    expect(thumbs).to_have_count(3, timeout=WAIT_MS)
    for i in range(3):
        assert "/jobs/" in thumbs.nth(i).get_attribute("src")  # 64 px images are their own thumbnails
    expect(page.locator("#job-state")).to_have_text("succeeded")
    seen = page.evaluate("JobPage.eventsSeen")  # the live path is the event stream, not polling
    assert seen.get("job.state", 0) >= 1 and seen.get("item.finished", 0) + seen.get("job.finished", 0) >= 1, seen
    page.evaluate("Promise.all([...document.querySelectorAll('#gallery img')].map(i => i.decode()))")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 900, "height": 560})
    page.screenshot(path=str(SCREENSHOT))
    # the user's text is shown as text, never as markup
    page.get_by_role("button", name=re.compile(r"^Open image 0")).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator('dd[data-field="prompt"]')).to_have_text(prompts[0])
    expect(dialog.locator('dd[data-field="seed"]')).to_have_text("31")
    expect(dialog.locator('dd[data-field="worker"]')).to_have_text("w-main")
    expect(dialog.locator('dd[data-field="size"]')).to_have_text("64×64")
    expect(dialog.locator('dd[data-field="cached"]')).to_have_text("no")
    assert page.locator("b", has_text="fox").count() == 0
    expect(page.get_by_role("button", name="Forget token")).to_be_hidden()  # no token on this stack
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


def test_api_errors_show_next_to_their_field(page):
    page.goto("/")
    page.get_by_label("Prompts").fill("one")
    page.get_by_label("Width", exact=True).fill("65")
    page.get_by_role("button", name="Generate").click()
    err = page.locator('[data-field~="params.width"] .error')
    expect(err).to_contain_text("multiple of 8")
    expect(page.get_by_label("Width", exact=True)).to_have_attribute("aria-invalid", "true")
    assert page.url.endswith("/")  # nothing was submitted
    # Chromium logs the refused request itself; that one is expected, nothing else is
    assert page.console_errors == ["Failed to load resource: the server responded with a status of 422 "
                                   "(UNPROCESSABLE ENTITY)"]
    page.console_errors.clear()


def test_sweep_from_the_editor_makes_a_labelled_grid(page, client):
    page.goto("/")
    page.get_by_label("Prompts").fill("a swept lighthouse")
    for name, value in (("Width", "64"), ("Height", "64"), ("Steps", "4")):
        page.get_by_label(name, exact=True).fill(value)
    page.get_by_label("Parameter 1").select_option("guidance_scale")
    page.get_by_label("Values 1").fill("5, 9")
    expect(page.get_by_label("Make a labelled grid of the results")).to_be_checked()
    page.get_by_role("button", name="Generate").click()
    job_id = _job_id(page)
    expect(page.locator("#gallery img")).to_have_count(2, timeout=WAIT_MS)
    expect(page.locator("#gallery")).to_contain_text("guidance_scale=9")
    expect(page.locator("#grid-img")).to_be_visible(timeout=WAIT_MS)
    assert client.job(job_id)["sweep"] == {"guidance_scale": [5, 9]}


def test_a_dropped_jsonl_file_keeps_its_per_item_columns(page, client):
    lines = b'{"prompt": "from a file", "seed": 77}\n{"prompt": "second line", "seed": 78}\n'
    page.goto("/")
    page.get_by_label("Prompt file (.txt, .csv, .jsonl)").set_input_files(
        files=[{"name": "prompts.jsonl", "mimeType": "application/x-ndjson", "buffer": lines}])
    expect(page.locator("#file-note")).to_contain_text("Using prompts.jsonl (2 lines)")
    expect(page.get_by_label("Prompts")).to_be_disabled()
    for name, value in (("Width", "64"), ("Height", "64"), ("Steps", "4")):
        page.get_by_label(name, exact=True).fill(value)
    page.get_by_role("button", name="Generate").click()
    job_id = _job_id(page)
    doc = wait_job(client, job_id)
    assert [(it["prompt"], it["seed"]) for it in doc["items"]] == [("from a file", 77), ("second line", 78)]
    assert doc["params"]["width"] == 64


def test_cancel_a_running_job_from_its_page(page, client):
    job_id = client.submit({"prompts": ["long one", "long two", "long three", "long four"],
                            "params": {"width": 256, "height": 256, "steps": 60, "images_per_prompt": 2}})["id"]
    page.goto(f"/#/jobs/{job_id}")
    expect(page.locator("#job-state")).to_have_text("running", timeout=WAIT_MS)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-state")).to_have_text("cancelled", timeout=WAIT_MS)
    doc = wait_job(client, job_id)
    assert doc["state"] == "cancelled" and doc["counts"]["succeeded"] < 8
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()


def test_jobs_list_tells_jobs_apart(page, client):
    first = "a <b>bold</b> lighthouse at dusk, oil on canvas, storm clouds rolling in over the harbour"
    job_id = client.submit({"prompts": [first, "a quiet second prompt"],
                            "params": {"width": 64, "height": 64, "steps": 2}})["id"]
    wait_job(client, job_id)
    page.goto("/#/jobs")
    row = page.locator("#jobs-body tr", has_text=job_id[:8])
    expect(row).to_contain_text("builtin:tiny-sd")
    expect(row).to_contain_text("txt2img · 64×64")
    cell = row.locator(".prompt-cell")
    expect(cell).to_have_text(re.compile(r"^a <b>bold</b> lighthouse at dusk, .{20,}…$"))  # the first prompt, cut
    assert len(cell.inner_text()) <= 60
    expect(cell).to_have_attribute("title", first)  # whole, for a hover
    assert page.locator("#jobs-body b").count() == 0  # shown as text, never as markup
    expect(page.locator("#jobs-body progress").first).to_be_visible()


def test_fleet_page_speed_and_queues(page, client):
    job_id = client.submit({"prompts": [f"a busy fleet, view {i}" for i in range(24)],
                            "params": {"width": 256, "height": 256, "steps": 40}})["id"]
    try:
        page.goto("/#/fleet")
        row = page.locator("#workers-body tr", has_text="w-main")
        expect(row).to_be_visible(timeout=30_000)
        expect(row).to_contain_text("cpu")
        expect(row).to_contain_text(re.compile(r"\d+ s ago"))
        expect(row.get_by_role("link", name=re.compile(job_id[:8]))).to_be_visible(timeout=WAIT_MS)  # current item
        # measured once an item is made: a number with a unit per kind of item, never NaN
        speed = row.locator(".speeds li", has_text="tiny-sd txt2img 256×256")
        expect(speed).to_be_visible(timeout=WAIT_MS)
        expect(speed.locator(".speed")).to_have_text(re.compile(r"^\d[\d,.]* steps/s · \d[\d,.]* (s/image|images/s)$"))
        assert "NaN" not in row.inner_text()
        # queues: the ones with waiting messages shown, the empty rest folded
        waiting = page.locator("#queues-body tr")
        for cells in (waiting.nth(i).locator("td").all_inner_texts() for i in range(waiting.count())):
            assert cells == ["Nothing is waiting."] or int(cells[1]) > 0, cells
        expect(page.locator("#queues-idle")).to_be_visible()
        expect(page.locator("#queues-idle-body tr").first).to_be_hidden()  # folded until opened
        expect(page.locator("#queues-idle-count")).to_have_text(re.compile(r"^\d+ queues? with nothing waiting$"))
        page.set_viewport_size({"width": 1100, "height": 600})
        expect(row.get_by_role("link", name=re.compile(job_id[:8]))).to_be_visible(timeout=WAIT_MS)
        page.screenshot(path=str(FLEET_SCREENSHOT))
        page.locator("#queues-idle-count").click()
        expect(page.locator("#queues-idle-body tr").first).to_be_visible()
        expect(page.locator("#page-fleet")).to_contain_text("sdq.cpu.any.p256")
        expect(page.locator("#queues-idle-body td:nth-child(3)").first).to_have_text("1")  # w-main listens
    finally:
        client.cancel(job_id)
    wait_job(client, job_id)


def test_speed_and_queue_rendering_rules(page):
    """The Fleet page's rules on cases the shared stack does not reliably reach: a worker that has
    not made anything yet, a fast kind of item, several queues with waiting messages."""
    page.goto("/#/fleet")
    assert page.evaluate("speedCell({}).textContent") == "not measured yet"
    assert page.evaluate("speedCell(null).textContent") == "not measured yet"
    # 2.62 megapixel-steps/s at 512x512 is 10 steps/s, 2 s per 20-step image; 40x that is 20 images/s
    line = page.evaluate("speedLines({'m|txt2img|p512': {rate: 2.62144, n: 3, width: 512, height: 512}})[0]")
    assert (line["kind"], line["text"]) == ("m txt2img 512×512", "10 steps/s · 2 s/image")
    assert page.evaluate("speedLines({'m|txt2img|p512': {rate: 104.8576, n: 3, width: 512, height: 512}})[0].text") == \
        "400 steps/s · 20 images/s"
    # measured at 64x64 in the 256 class: read at 64x64, not scaled to 256x256
    assert page.evaluate("speedLines({'m|txt2img|p256': {rate: 0.08192, n: 3, width: 64, height: 64}})[0].text") == \
        "20 steps/s · 1 s/image"
    # a record from a worker that does not say the size: the class's largest size, marked as a bound
    assert page.evaluate("speedLines({'m|img2img|p256': {rate: 0.65536, n: 1}})[0].kind") == "m img2img ≤256×256"
    order = page.evaluate("""() => {
        FleetPage.queues([{name: "sdq.a", messages: 0}, {name: "sdq.b", messages: 7}, {name: "sdq.c", messages: 2},
                          {name: "sdq.d", messages: 2}],
                         [{name: "w", queues: ["sdq.a", "sdq.b", "sdq.c", "sdq.d"]}, {name: "v", queues: ["sdq.b"]}]);
        return [[...document.querySelectorAll("#queues-body tr td:first-child")].map((td) => td.textContent),
                [...document.querySelectorAll("#queues-idle-body tr td:first-child")].map((td) => td.textContent),
                document.getElementById("queues-idle-count").textContent,
                document.querySelector("#queues-body tr td:nth-child(3)").textContent];
    }""")
    assert order == [["sdq.b", "sdq.c", "sdq.d"], ["sdq.a"], "1 queue with nothing waiting", "2"]


def test_readable_at_375_px(browser, stack):
    ctx = browser.new_context(viewport={"width": 375, "height": 800}, base_url=stack.env["SDQ_SERVER"])
    pg = ctx.new_page()
    try:
        for route in ("/", "/#/jobs", "/#/fleet"):
            pg.goto(route)
            pg.wait_for_load_state("networkidle")
            overflow = pg.evaluate("document.documentElement.scrollWidth")
            assert overflow <= 375, f"{route} is {overflow} px wide at a 375 px viewport"
        pg.goto("about:blank")
        pg.goto("/")
        pg.keyboard.press("Tab")  # the first Tab reaches the skip link: the page is keyboard-usable
        assert pg.evaluate("document.activeElement.textContent") == "Skip to content"
    finally:
        ctx.close()


def test_token_is_asked_for_and_kept_for_the_session_only(browser, stack_factory):
    tokens = {"carol": "web-carol-token", "dave": "web-dave-token"}
    st = stack_factory("web-browser-tokens", env={"SDQ_API_TOKENS": ",".join(f"{o}:{t}" for o, t in tokens.items())})
    from cli.client import Client

    mine = Client(st.env["SDQ_SERVER"], tokens["carol"]).submit({"prompts": ["carol's"]})["id"]
    theirs = Client(st.env["SDQ_SERVER"], tokens["dave"]).submit({"prompts": ["dave's"]})["id"]
    ctx = browser.new_context(base_url=st.env["SDQ_SERVER"])
    pg = ctx.new_page()
    try:
        pg.goto("/#/jobs")
        expect(pg.get_by_role("heading", name="API token")).to_be_visible()
        pg.get_by_label("Token", exact=True).fill(tokens["carol"])
        pg.get_by_role("button", name="Use token").click()
        expect(pg.locator("#jobs-body")).to_contain_text(mine[:8])
        assert theirs[:8] not in pg.locator("#jobs-body").inner_text()
        assert pg.evaluate("sessionStorage.getItem('sdq.token')") == tokens["carol"]
        assert pg.evaluate("localStorage.length") == 0 and pg.context.cookies() == []
    finally:
        ctx.close()


def test_the_form_shows_a_quote_before_anything_is_submitted(page, client):
    before = client.jobs()["total"]
    page.goto("/")
    page.get_by_label("Prompts").fill("a quoted cube\na quoted cone")
    page.get_by_label("Width", exact=True).fill("64")
    page.get_by_label("Height", exact=True).fill("64")
    page.get_by_label("Steps", exact=True).fill("4")
    page.get_by_role("button", name="Estimate first").click()
    box = page.locator("#quote-box")
    expect(box).to_contain_text("2 items", timeout=30_000)
    expect(box).to_contain_text("Can run on w-main")
    expect(box).to_contain_text("s per image")
    assert client.jobs()["total"] == before  # the estimate created nothing


def test_the_model_field_offers_the_model_catalog(page):
    page.goto("/")
    options = page.locator("#models option")
    expect(options.first).to_be_attached(timeout=30_000)
    values = options.evaluate_all("els => els.map(e => [e.value, e.textContent])")
    ids = dict(values)
    assert "builtin:tiny-flux" in ids and "Flux" in ids["builtin:tiny-flux"]  # from GET /v1/models, not the fleet
    assert "warm on w-main" in ids["builtin:tiny-sd"]


def test_the_job_view_shows_an_image_forming_before_it_is_made(page):
    page.goto("/")
    page.get_by_label("Prompts").fill("a slowly forming tower")
    page.get_by_label("Width", exact=True).fill("256")
    page.get_by_label("Height", exact=True).fill("256")
    page.get_by_label("Steps", exact=True).fill("60")
    page.get_by_label("Show the images forming while they are made").check()
    page.get_by_role("button", name="Generate").click()
    _job_id(page)
    forming = page.locator("#gallery img.preview")
    expect(forming.first).to_be_visible(timeout=WAIT_MS)  # shown only in the tile of an item not made yet
    assert forming.first.get_attribute("src").startswith("data:image/jpeg;base64,")
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=WAIT_MS)
    expect(page.locator("#gallery img.preview")).to_have_count(0)  # the made image replaced it
