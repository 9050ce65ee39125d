"""The result cache's pure logic: the key, the opt-out through submit, CLI and prompt files, and the
summary table (no services; the end-to-end tests are in tests/test_cache.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from sdq.records import Item, WorkerRecord
from sdq.state.resultindex import Maker, cache_key, wants_cache

FAST = {"width": 64, "height": 64, "steps": 4}

CPU = Maker("builtin:tiny-sd", "w" * 64, "cpu", "fp32", True)
PARAMS = {"steps": 4, "guidance_scale": 7.5, "width": 64, "height": 64, "scheduler": "pndm", "strength": 0.8,
          "noise_level": 20}


def _key(maker: Maker = CPU, **change) -> str:
    args = dict(owner="", pipeline="txt2img", params=PARAMS, prompt="a cat", negative_prompt="", seed=7,
                init_image_sha256=None, watermark=False)
    args.update(change)
    return cache_key(maker, **args)


def test_key_is_stable_and_ignores_parameter_order():
    assert _key() == _key(params=dict(reversed(list(PARAMS.items()))))
    assert len(_key()) == 64


@pytest.mark.parametrize("change", [
    {"pipeline": "img2img"}, {"params": {**PARAMS, "steps": 5}}, {"params": {**PARAMS, "guidance_scale": 7.0}},
    {"params": {**PARAMS, "scheduler": "ddim"}}, {"params": {**PARAMS, "width": 72}}, {"prompt": "a cat."},
    {"negative_prompt": "blurry"}, {"seed": 8}, {"init_image_sha256": "0" * 64}, {"watermark": True},
    {"owner": "alice"}, {"images_sha256": {"mask_image": "1" * 64}},
])
def test_every_input_of_the_image_changes_the_key(change):
    assert _key(**change) != _key()


def test_further_image_inputs_are_keyed_by_content_and_none_keeps_the_old_key():
    assert _key(images_sha256={}) == _key(images_sha256=None) == _key()
    assert _key(images_sha256={"mask_image": "1" * 64}) != _key(images_sha256={"mask_image": "2" * 64})


@pytest.mark.parametrize("maker", [
    Maker("builtin:tiny-sd", "w" * 64, "gpu", "fp16", True),  # a GPU/fp16 entry is never a CPU/fp32 one
    Maker("builtin:tiny-sd", "w" * 64, "gpu", "fp32", True),
    Maker("builtin:tiny-sd", "w" * 64, "cpu", "bf16", True),
    Maker("builtin:tiny-sd", "x" * 64, "cpu", "fp32", True),  # same id, other weights
    Maker("other", "w" * 64, "cpu", "fp32", True),
    Maker("builtin:tiny-sd", "w" * 64, "cpu", "fp32", False),  # safety checker off
])
def test_the_maker_is_in_the_key(maker):
    assert _key(maker) != _key()


def test_opt_out_is_per_item():
    assert wants_cache(Item(index=0)) and wants_cache(Item(cache=None)) and wants_cache(Item(cache=True))
    assert not wants_cache(Item(cache=False))


def test_submit_records_the_opt_out_per_item_without_splitting_chunks():
    from producer.planning.jobs import plan_job, route
    from producer.schemas import parse_submit
    from sdq.config import Settings

    body = {"items": [{"prompt": "a"}, {"prompt": "b", "cache": False}, {"prompt": "c"}],
            "params": {**FAST, "cache": True}}
    plan = plan_job(parse_submit(body), Settings.from_env({}), "")
    assert [it.cache for it in plan.items] == [None, False, None]
    fleet = [WorkerRecord(name="w", queues=["sdq.any.any.p256"], max_batch=4)] * 4
    routed = route(plan, fleet)
    plain = route(plan_job(parse_submit({"prompts": ["a", "b", "c"], "params": FAST}), Settings.from_env({}), ""),
                  fleet)
    # the flag is not a generation parameter: the chunks are cut as without it
    assert [c.indices for c in routed] == [c.indices for c in plain]
    assert len(routed) == 1
    message = routed[0].message()
    assert [it.get("cache") for it in message["items"]] == [None, False, None]
    assert "cache" not in message["params"]
    off = plan_job(parse_submit({"prompts": ["a", "b"], "params": {**FAST, "cache": False}}), Settings.from_env({}), "")
    assert [it.cache for it in off.items] == [False, False]
    with pytest.raises(Exception, match="params.cache"):
        parse_submit({"prompts": ["a"], "params": {"cache": "maybe"}})


def test_cli_no_cache_flag():
    from cli.jobs import build_body
    from cli.main import _parser

    args = _parser().parse_args(["submit", "-", "--no-cache", "--steps", "4"])
    assert build_body(args, [{"prompt": "a"}])["params"] == {"steps": 4, "cache": False}
    args = _parser().parse_args(["submit", "-"])
    assert "cache" not in build_body(args, [{"prompt": "a"}])["params"]


def test_prompt_files_may_opt_single_items_out():
    from sdq.prompts import PromptFileError, parse_prompts

    rows = parse_prompts("prompt,cache\na,false\nb,\nc,yes\n", "p.csv")
    assert rows == [{"prompt": "a", "cache": False}, {"prompt": "b"}, {"prompt": "c", "cache": True}]
    assert parse_prompts('{"prompt": "a", "cache": false}\n', "p.jsonl") == [{"prompt": "a", "cache": False}]
    with pytest.raises(PromptFileError, match="cache='maybe'"):
        parse_prompts("prompt,cache\na,maybe\n", "p.csv")


def test_summary_table_counts_cached_items_apart():
    from cli.jobs import summary_table

    items = [{"index": i, "state": "succeeded", "worker": "w1", "duration_s": d, "cached": c}
             for i, (d, c) in enumerate([(2.0, None), (0.01, True), (4.0, None)])]
    doc = {"id": "j", "state": "succeeded", "n_items": 3, "created_at": 0.0, "started_at": 0.0, "finished_at": 6.0,
           "counts": {"queued": 0, "running": 0, "succeeded": 3, "failed": 0, "cancelled": 0}}
    table = summary_table(SimpleNamespace(all_items=lambda job_id: (doc, items)), doc)
    rows = {line.split()[0] + (" (cached)" if "(cached)" in line else ""): line.split()[-2:] for line in
            table.splitlines() if line.startswith("w1")}
    assert rows == {"w1": ["2", "3.000"], "w1 (cached)": ["1", "0.010"]}
