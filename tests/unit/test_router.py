"""The router's decisions, fed capability records as `sdq.state.fleet.live_workers` returns them: no Redis,
no Celery, no clock (the time is passed in)."""
from __future__ import annotations

from typing import Any

import pytest

from sdq.records import WorkerRecord
from sdq import defaults
from sdq.scheduling import scheduling, speed
from sdq.records import Chunk, Item
from workers.running.routing import Defer, Fail, HandOff, PassOn, Retry, Router, Run, next_try
from workers.running.speedometer import Speedometer

QUEUE = "sdq.cpu.fp32.p256"
PARAMS = {"width": 64, "height": 64, "steps": 10, "guidance_scale": 7.0, "scheduler": "ddim"}
NOW = 1_000_000.0


def record(name: str, *, queues: tuple[str, ...] = (QUEUE,), models: tuple[str, ...] = (),
           loaded: tuple[str, ...] = (), current: dict[str, Any] | None = None, kind: str = "cpu",
           rate: float | None = None) -> WorkerRecord:
    """A capability record with the fields the router reads (as `workers.fleet.capability` publishes them)."""
    key = speed.speed_key("tiny", "txt2img", 64 * 64)
    return WorkerRecord(name=name, kind=kind, queues=list(queues), models=list(models), loaded_models=list(loaded),
                        current_item=current, last_seen=NOW, speed={key: {"rate": rate, "n": 4}} if rate else {})


def chunk(n: int = 4, **changes: Any) -> Chunk:
    items = changes.pop("items", None) or [Item(index=i, prompt=f"p{i}", seed=i) for i in range(n)]
    params = changes.pop("params", None) or dict(PARAMS)
    return Chunk(job="j1", model="tiny", pipeline="txt2img", params=params, items=items, queue=QUEUE, **changes)


def router(name: str = "me", rate: float | None = None, **kw: Any) -> Router:
    meter = None
    if rate is not None:
        meter = Speedometer("cpu")
        meter.observe("tiny", "txt2img", PARAMS, 1, speed.item_work("txt2img", PARAMS) / rate)
    return Router(name, speedometer=meter, **kw)


# --- decide: pass on, fail --------------------------------------------------------------------------

def test_a_model_this_worker_may_not_load_is_passed_on_unchanged():
    c = chunk()
    decision = router(models=["other"]).decide(c, [record("me")], [], NOW)
    assert decision == PassOn(c, "model tiny is not in this worker's --models")


@pytest.mark.parametrize("kw, words", [({"max_pixels": 32 * 32}, "exceed this worker's --max-pixels"),
                                       ({"memory_gb": 2.0}, "needs 8 GB of device memory")])
def test_items_above_what_this_worker_advertises_are_passed_on(kw, words):
    decision = router(**kw).decide(chunk(requires={"min_memory_gb": 8}), [record("me")], [], NOW)
    assert isinstance(decision, PassOn) and words in decision.reason and not decision.given_back


def test_items_that_ran_out_of_memory_here_go_to_another_live_worker():
    items = [Item(index=0, oom_workers=["me"], oom_error="OOM on me")]
    decision = router().decide(chunk(items=items), [record("me"), record("big")], [], NOW)
    assert isinstance(decision, PassOn) and "already ran out of memory" in decision.reason


def test_items_that_ran_out_of_memory_here_fail_when_nothing_else_can_ever_serve_them():
    items = [Item(index=0, oom_workers=["me", "other"], oom_error="OOM on other")]
    fleet = [record("me"), record("other"), record("elsewhere", queues=("sdq.gpu.fp16.p256",))]
    decision = router().decide(chunk(items=items), fleet, [], NOW)
    assert isinstance(decision, Fail)
    assert decision.error.startswith("OOM on other; no other live worker can take it (tried me, other)")


# --- decide: warm-model affinity ----------------------------------------------------------------------

def test_a_chunk_is_left_once_to_an_idle_worker_that_holds_the_model_warm():
    c = chunk()
    fleet = [record("me"), record("warm", loaded=("tiny",))]
    decision = router().decide(c, fleet, ["other-model"], NOW)
    assert isinstance(decision, Defer) and decision.pause_s == 0
    assert decision.chunk == chunk(deferred=True) and "warm on idle worker(s) warm" in decision.why
    # once deferred, it is run here
    assert router().decide(decision.chunk, fleet, [], NOW) == Run(4)


@pytest.mark.parametrize("fleet, loaded", [
    ([record("me"), record("warm", loaded=("tiny",), current={"job": "j0"})], []),  # busy: no help now
    ([record("me"), record("warm", loaded=("other",))], []),  # holds another model
    ([record("me"), record("warm", loaded=("tiny",), queues=("sdq.gpu.fp16.p256",))], []),  # other queue
    ([record("me"), record("warm", loaded=("tiny",))], ["tiny"]),  # warm here too
])
def test_no_deferral_without_an_idle_warm_worker_on_the_same_queue(fleet, loaded):
    assert router().decide(chunk(), fleet, loaded, NOW) == Run(4)


LORA = [{"name": "builtin:tiny-lora", "scale": 0.8}]


def test_a_lora_chunk_is_left_to_an_idle_worker_holding_the_model_and_its_adapters():
    c = chunk(params={**PARAMS, "loras": LORA})
    both = record("both", loaded=("tiny",))
    both.loaded_adapters = {"tiny": ["builtin:tiny-lora"]}
    fleet = [record("me"), record("model-only", loaded=("tiny",)), both]
    decision = router().decide(c, fleet, ["tiny"], NOW, adapters={})  # the model is warm here, the adapter not
    assert isinstance(decision, Defer) and "worker(s) both;" in decision.why and "LoRA builtin:tiny-lora" in decision.why
    # this worker holds both: it runs the chunk
    assert router().decide(c, fleet, ["tiny"], NOW, adapters={"tiny": ["builtin:tiny-lora"]}) == Run(4)


def test_a_lora_chunk_falls_back_to_model_affinity_when_nobody_holds_its_adapters():
    c = chunk(params={**PARAMS, "loras": LORA})
    fleet = [record("me"), record("model-only", loaded=("tiny",))]
    decision = router().decide(c, fleet, [], NOW)  # nothing loaded here: the model's holder is better
    assert isinstance(decision, Defer) and "worker(s) model-only;" in decision.why
    assert router().decide(c, fleet, ["tiny"], NOW) == Run(4)  # the model is warm here: load the adapter here


# --- decide: a chunk given back here ------------------------------------------------------------------

def test_a_chunk_given_back_here_is_passed_on_when_another_worker_lives():
    decision = router().decide(chunk(), [record("me"), record("other")], ["tiny"], NOW, given_back=True)
    assert isinstance(decision, PassOn) and decision.given_back
    assert decision.chunk.failed_on == ["me"]


def test_a_chunk_given_back_here_is_run_here_when_no_other_worker_lives():
    assert router().decide(chunk(), [record("me")], ["tiny"], NOW, given_back=True) == Run(4)


# --- decide: the part of a chunk to run, given faster workers ---------------------------------------

def test_without_speed_scheduling_the_whole_chunk_runs_here():
    fleet = [record("me", rate=0.1), record("fast", rate=10.0)]
    assert router().decide(chunk(), fleet, ["tiny"], NOW, backlog=4) == Run(4)


def test_a_slow_worker_runs_its_share_and_the_rest_goes_back_at_once_for_faster_ones():
    c = chunk(8)
    fleet = [record("me", rate=1.0), record("fast", rate=3.0)]
    decision = router(rate=1.0).decide(c, fleet, ["tiny"], NOW, backlog=8)
    take = scheduling.claim_count(1.0, [3.0], 8, 8, [0.0])
    assert decision == Run(take, c.with_items(c.items[take:], deferred_at=NOW), decision.why)
    assert take == 2 and "starting 2 of 8 items here" in decision.why


def test_a_much_slower_worker_leaves_a_small_job_to_the_faster_one_and_pauses():
    c = chunk(1)
    decision = router(rate=0.1).decide(c, [record("me", rate=0.1), record("fast", rate=10.0)], ["tiny"], NOW,
                                       backlog=1)
    assert decision == Defer(c.with_items(c.items, deferred_at=NOW), decision.why, scheduling.DEFER_PAUSE_S)


def test_faster_workers_busy_with_another_job_or_that_failed_the_chunk_do_not_count():
    fleet = [record("me", rate=0.1), record("busy", rate=10.0, current={"job": "j0", "running": [0]}),
             record("broken", rate=10.0)]
    assert router(rate=0.1).decide(chunk(1, failed_on=["broken"]), fleet, ["tiny"], NOW, backlog=1) == Run(1)


def test_a_chunk_left_to_faster_workers_too_long_is_run_by_whoever_holds_it():
    c = chunk(1, deferred_at=NOW - scheduling.DEFER_MAX_S - 1)
    fleet = [record("me", rate=0.1), record("fast", rate=10.0)]
    assert router(rate=0.1).decide(c, fleet, ["tiny"], NOW, backlog=1) == Run(1)


# --- out of memory ------------------------------------------------------------------------------------

def test_out_of_memory_first_retries_one_per_call_then_in_low_memory_mode_then_gives_up():
    assert next_try(4, False) == Retry(1, False)
    assert next_try(1, False) == Retry(1, True)
    assert next_try(1, True) is None


def test_out_of_memory_in_low_memory_mode_is_handed_to_another_live_worker():
    batch = [Item(index=0)]
    assert router().after_oom(chunk(items=batch), batch, [record("me"), record("big")], "OOM") == HandOff("OOM")


def test_out_of_memory_fails_when_no_other_worker_serves_the_queue():
    batch = [Item(index=0)]
    decision = router().after_oom(chunk(items=batch), batch, [record("me"), record("gpu", queues=("x",))], "OOM")
    assert decision == Fail("OOM; no other live worker can take it: retry the job when one has joined")


def test_out_of_memory_hand_offs_are_bounded_per_item():
    tried = [f"w{i}" for i in range(defaults.OOM_HAND_OFFS)]
    batch = [Item(index=0, oom_workers=tried)]
    fleet = [record("me"), *map(record, tried), record("fresh")]
    assert isinstance(router().after_oom(chunk(items=batch), batch, fleet, "OOM"), Fail)
    batch = [Item(index=0, oom_workers=tried[:-1])]
    assert router().after_oom(chunk(items=batch), batch, fleet, "OOM") == HandOff("OOM")
