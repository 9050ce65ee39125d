"""The typed contract: Job, Item and Chunk declared once; the documents and stored forms follow."""
from __future__ import annotations

import json
import re

import pytest

from sdq import records
from sdq.exceptions import BadMessage
from sdq.records import Chunk, Item, Job

STORED = {"index": 3, "prompt": "a cat", "negative_prompt": "", "seed": 7, "gen": 2,
          "params": {"steps": 4, "width": 64, "height": 64}, "state": "succeeded", "worker": "w1",
          "key": "jobs/j/00003.png", "thumb_key": "jobs/j/thumbs/00003.webp", "tries": 1, "backup": {"worker": "w2"}}


def test_the_task_message_carries_what_a_worker_needs_and_no_results():
    item = Item.from_record(STORED)
    assert item.show(records.MESSAGE) == {"index": 3, "prompt": "a cat", "negative_prompt": "", "seed": 7,
                                          "init_image": None, "images": None, "gen": 2, "cache": None, "oom_error": None,
                                          "oom_workers": None}
    body = Chunk.of(Job(id="j"), "q", [item]).message()
    assert body["items"] == [{"index": 3, "prompt": "a cat", "negative_prompt": "", "seed": 7, "gen": 2}]
    assert Item.from_record({"index": 0, "prompt": "x"}).gen == 0  # first attempt


def test_status_and_manifest_show_results_but_no_internal_bookkeeping():
    item = Item.from_record(STORED)
    status, manifest = item.show(records.STATUS), item.show(records.MANIFEST)
    for doc in (status, manifest):
        assert doc["state"] == "succeeded" and doc["key"] == "jobs/j/00003.png" and doc["params"]["steps"] == 4
        assert not {"gen", "tries", "backup", "thumb_key", "steps", "timings"} & set(doc)
    assert set(manifest) < set(status)  # the manifest is the reproducible subset
    assert {"url", "bytes", "started_at", "oom_workers"} <= set(status) - set(manifest)


def test_the_webhook_body_summarises_the_job_without_its_parameters():
    job = Job(id="j", state="succeeded", n_items=2, counts={"succeeded": 2}, params={"steps": 4}, owner="alice",
              manifest_key="jobs/j/manifest.json")
    body = job.show(records.WEBHOOK)
    assert body["id"] == "j" and body["counts"] == {"succeeded": 2} and body["manifest_key"] == "jobs/j/manifest.json"
    assert "params" not in body and "owner" not in body
    assert "owner" not in job.show(records.STATUS)  # tenants never see each other's names


def test_a_stored_item_round_trips_and_unset_fields_are_not_stored():
    item = Item.from_record(STORED)
    assert item.worker == "w1" and item.backup == {"worker": "w2"} and item.error is None
    stored = item.to_record()
    assert Item.from_record(json.loads(json.dumps(stored))) == item
    assert "error" not in stored and "init_image" not in stored  # a Lua script reads a missing field as nil


def test_undeclared_fields_are_named_and_left_out():
    record = {**STORED, "surprise": 1}
    assert Item.undeclared(record) == {"surprise"} and Item.undeclared(STORED) == set()
    assert not hasattr(Item.from_record(record), "surprise")


def test_the_job_hash_round_trips_with_its_types_and_counters():
    job = Job(id="j", owner="bob", state="queued", created_at=12.5, model="m", pipeline="txt2img",
              params={"steps": 4, "watermark": True}, requires={"device": "cpu"}, priority=7, n_items=3, seed=9,
              sweep={"steps": [2, 4]})
    stored = {k: str(v) for k, v in job.to_hash().items()}  # Redis keeps text
    assert json.loads(stored["params"]) == job.params and stored["priority"] == "7"
    stored.update({"c:queued": "2", "c:succeeded": "1", "cancel": "1", "busy_s": "1.5", "steps_done": "4"})
    back = Job.from_hash(stored)
    assert back.params == job.params and back.requires == job.requires and back.sweep == job.sweep
    assert back.created_at == 12.5 and back.priority == 7 and back.seed == 9 and back.owner == "bob"
    assert back.counts == {"queued": 2, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0}
    assert back.cancel is True and back.busy_s == 1.5 and back.steps_done == 4


def test_a_chunk_travels_as_json_and_comes_back_the_same():
    job = Job(id="j", model="m", pipeline="img2img", params={"watermark": True}, requires={"min_memory_gb": 8},
              priority=9)
    items = [Item(index=i, prompt=f"p{i}", seed=i, init_image="uploads/a.png",
                  params={"width": 64, "height": 64, "steps": 4, "strength": 0.5}) for i in range(2)]
    chunk = Chunk.of(job, "sdq.cpu.s", items)
    assert chunk.watermark and chunk.requires == {"min_memory_gb": 8} and chunk.queue == "sdq.cpu.s"
    body = json.loads(json.dumps(chunk.message()))
    again = Chunk.from_message(body)
    assert again.indices == [0, 1] and again.items[1].init_image == "uploads/a.png" and again.params == items[0].params
    assert again.priority == chunk.priority and again.job == "j" and not again.backup
    assert not {"state", "key", "params"} & set(body["items"][0])  # items carry no results, params once


def test_a_message_from_an_older_sender_takes_defaults_and_ignores_unknown_keys():
    chunk = Chunk.from_message({"job": "j", "model": "m", "pipeline": "txt2img",
                                "params": {"steps": 1, "width": 8, "height": 8},
                                "items": [{"index": 0, "prompt": "x", "seed": 1}], "future_key": True})
    assert chunk.queue is None and chunk.failed_on == [] and chunk.items[0].gen == 0 and not chunk.deferred


def test_a_new_job_stores_no_flags_the_scripts_test_for_presence():
    """`webhook_queued` is claimed with HSETNX and `cancel` compared to '1': a new job must not hold them."""
    stored = Job(id="j", model="m", pipeline="txt2img", created_at=1.0).to_hash()
    assert not {"cancel", "webhook_queued", "counts"} & set(stored)


def test_the_item_finished_event_is_built_by_the_store_from_the_declaration():
    """The Lua scripts' `item.finished` table lists exactly the fields `EVENT` shows."""
    from sdq.state import scripts

    named = {part.split(" = ")[0] for part in scripts.ITEM_FINISHED.strip("{}").split(", ")}
    assert named == set(records.shown_in(Item, records.EVENT)) == {"index", "seed", "state", "worker", "key",
                                                                   "duration_s", "error", "cached"}
    for name in scripts.NAMES:  # the placeholder was filled in wherever the common helpers went
        assert "ITEM_FINISHED" not in scripts.source(name)
    assert scripts.ITEM_FINISHED in scripts.source("finish")


GOOD = {"job": "j", "model": "m", "pipeline": "txt2img", "params": {"width": 64, "height": 64, "steps": 2},
        "items": [{"index": 0, "prompt": "x", "seed": 1}]}


@pytest.mark.parametrize("body, words", [
    ("nonsense", "a chunk is a JSON object, not str"),
    ([GOOD], "not list"),
    ({**GOOD, "job": 7}, "'job' must be a non-empty string"),
    ({**GOOD, "model": ""}, "'model' must be a non-empty string"),
    ({**GOOD, "pipeline": "outpaint"}, "'pipeline' must be one of"),
    ({**GOOD, "params": {"width": "64", "height": 64, "steps": 2}}, "'params' must hold positive integers"),
    ({**GOOD, "params": {"width": 64, "height": 64, "steps": True}}, "'params' must hold positive integers"),
    ({**GOOD, "items": []}, "'items' must be a non-empty list"),
    ({**GOOD, "items": [{"index": "0", "prompt": "x"}]}, "an item needs an integer index"),
    ({**GOOD, "items": [{"index": 0, "prompt": "x", "gen": -1}]}, "an item needs an integer index"),
    ({**GOOD, "items": [{"index": 0, "prompt": None}]}, "a text prompt"),
])
def test_a_body_that_is_no_chunk_is_named_not_half_parsed(body, words):
    with pytest.raises(BadMessage, match=re.escape(words)):
        Chunk.from_message(body)


def test_every_chunk_the_contract_builds_passes_the_message_check():
    chunk = Chunk.of(Job(id="j", model="m", pipeline="img2img"), "q",
                     [Item(index=i, prompt="p", params={"width": 64, "height": 64, "steps": 3, "strength": 0.5})
                      for i in range(3)])
    assert Chunk.from_message(json.loads(json.dumps(chunk.message()))).indices == [0, 1, 2]
    assert Chunk.from_message(GOOD).items[0].seed == 1


def test_a_worker_record_reads_an_older_workers_json_and_keeps_a_newer_ones_fields():
    older = {"name": "w1", "device": "cpu", "queues": ["q"], "models": None, "current_item": None}
    rec = records.WorkerRecord.from_record(older)
    assert (rec.name, rec.queues, rec.models, rec.loaded_models, rec.speed) == ("w1", ["q"], [], [], {})
    assert rec.items_done == 0
    assert rec.max_pixels is None and rec.memory_total_gb is None and not rec.stalled
    newer = {**older, "scratch_gb": 3.5, "stalled": True}
    back = records.WorkerRecord.from_record(json.loads(json.dumps(records.WorkerRecord.from_record(newer).to_record())))
    assert back.extra == {"scratch_gb": 3.5} and back.stalled
    assert "stalled" not in rec.to_record()  # written only while set: the scripts test `rec.stalled == true`
    declared = {f for f in records.WorkerRecord.__dataclass_fields__ if f not in ("stalled", "extra")}
    assert set(rec.to_record()) == declared  # the JSON form the workers always wrote, every field present
