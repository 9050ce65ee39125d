"""Memory modes: a model held whole, with model offload or with group offload (`sdq.memory.fit`), what
routing makes of them (`Router`, the producer's `need_gb`), the `--offload` setting per device, and the
result-cache key of low-memory mode."""
from __future__ import annotations

from typing import Any

import pytest

from sdq import families
from sdq.exceptions import CapabilityError
from sdq.memory import GROUP_SHARE, Memory, fit, modes
from sdq.records import Chunk, Item
from producer.planning.jobs import need_gb
from workers.loading.device import Device, resolve_offload
from workers.running.routing import Defer, PassOn, Router, Run

FLUX = families.FAMILIES["flux"].memory
MPX = 1024 * 1024
QUEUE = "sdq.gpu.bf16.p1024"
PARAMS = {"width": 1024, "height": 1024, "steps": 4, "guidance_scale": 3.5, "scheduler": "flow_euler"}
NOW = 1_000_000.0


def test_offloaded_needs_count_what_the_device_holds_at_a_time():
    whole = FLUX.need_gb("bf16", MPX)
    model = FLUX.need_gb("bf16", MPX, offload="model")  # the largest component (the transformer) + work
    group = FLUX.need_gb("bf16", MPX, offload="group")
    assert model == pytest.approx(FLUX.weights_gb * FLUX.largest_share + FLUX.gb_per_mpx, abs=0.01)
    assert group == pytest.approx(FLUX.weights_gb * GROUP_SHARE + FLUX.gb_per_mpx, abs=0.01)
    assert group < 24 < model < whole  # a 24 GB GPU runs a full-size Flux with group offload only
    assert FLUX.need_gb("fp32", MPX, offload="group") == pytest.approx(2 * group, abs=0.01)
    with pytest.raises(ValueError, match="offload mode"):
        FLUX.need_gb("bf16", MPX, offload="sequential")


@pytest.mark.parametrize("memory, offload, mode, fits", [
    (80.0, "auto", None, True),        # held whole when it fits
    (28.0, "auto", "model", True),     # the transformer and working memory fit: model offload
    (24.0, "auto", "group", True),     # only group offload fits
    (4.0, "auto", "group", False),     # not even offloaded: never takes it
    (24.0, "never", None, False),      # offload forbidden
    (80.0, "model", "model", True),    # offload forced
    (80.0, "group", "group", True),
    (None, "auto", None, True),        # memory unknown: as before, anything fits
])
def test_a_worker_holds_a_model_whole_when_it_can_and_offloads_only_when_it_must(memory, offload, mode, fits):
    got = fit({"memory": FLUX.record()}, "bf16", MPX, memory, offload=offload)
    assert (got.mode, got.fits) == (mode, fits)


def test_the_callers_minimum_still_counts_offloaded():
    got = fit({"memory": FLUX.record(), "min_memory_gb": 30}, "bf16", MPX, 24.0, offload="auto")
    assert not got.fits and got.need_gb == 30


def test_modes_per_setting():
    assert modes("auto") == (None, "model", "group") and modes("never") == (None,)
    with pytest.raises(ValueError):
        modes("sometimes")


def test_cpu_workers_never_offload_except_under_the_testing_aid():
    cpu, gpu = Device("cpu", "fp32", "cpu"), Device("cuda:0", "bf16", "GPU")
    assert resolve_offload("auto", cpu) == "never" and resolve_offload("auto", gpu) == "auto"
    assert resolve_offload("group", gpu) == "group"
    with pytest.raises(CapabilityError, match="--offload model"):
        resolve_offload("model", cpu)
    with pytest.raises(CapabilityError, match="expected one of"):
        resolve_offload("yes", gpu)
    simulated = Device("cpu", "fp32", "cpu", simulated_gb=0.1)
    assert resolve_offload("auto", simulated) == "auto" and simulated.memory_gb() == (0.1, 0.1)


def record(name: str, memory: float, offload: str = "auto", current: dict | None = None) -> dict[str, Any]:
    return {"name": name, "kind": "gpu", "device": "cuda:0", "dtype": "bf16", "queues": [QUEUE], "models": [],
            "loaded_models": [], "current_item": current, "memory_total_gb": memory, "offload": offload,
            "max_pixels": 2 * MPX, "last_seen": NOW}


def chunk(**changes: Any) -> Chunk:
    return Chunk(job="j1", model="flux", pipeline="txt2img", params=dict(PARAMS), items=[Item(index=0, seed=1)],
                 queue=QUEUE, requires={"memory": FLUX.record()}, **changes)


def router(memory: float, offload: str = "auto") -> Router:
    return Router("me", max_pixels=2 * MPX, memory_gb=memory, dtype="bf16", offload=offload)


def test_a_worker_below_even_the_offloaded_need_passes_the_item_on():
    decision = router(4.0).decide(chunk(), [record("me", 4.0)], [], NOW)
    assert isinstance(decision, PassOn) and "even with group offload" in decision.reason
    assert isinstance(router(24.0, "never").decide(chunk(), [record("me", 24.0, "never")], [], NOW), PassOn)


def test_an_offloading_worker_leaves_the_item_to_an_idle_worker_that_holds_the_model_whole():
    me, big = router(24.0), record("big", 80.0)
    assert me.fit(chunk()).mode == "group"
    decision = me.decide(chunk(), [record("me", 24.0), big], [], NOW)
    assert isinstance(decision, Defer) and decision.chunk.deferred and "big" in decision.why and decision.pause_s > 0
    # ...once: a chunk left to them is run here when it comes back
    assert isinstance(me.decide(decision.chunk, [record("me", 24.0), big], [], NOW), Run)
    # not to a busy one, one that offloads too, or one that forces offload
    for other in (record("big", 80.0, current={"job": "other"}), record("mid", 24.0), record("big", 80.0, "group")):
        assert isinstance(me.decide(chunk(), [record("me", 24.0), other], [], NOW), Run), other
    # a worker that holds it whole does not defer
    assert isinstance(router(80.0).decide(chunk(), [record("me", 80.0), record("big", 80.0)], [], NOW), Run)


def test_the_producer_counts_a_worker_able_when_it_fits_offloaded():
    requires = {"memory": FLUX.record()}
    assert need_gb(requires, record("w", 24.0), MPX) <= 24 < need_gb(requires, record("w", 24.0, "never"), MPX)
    assert need_gb(requires, record("w", 80.0), MPX) == FLUX.need_gb("bf16", MPX)


def test_a_result_made_in_low_memory_mode_has_its_own_cache_key():
    from sdq.state.resultindex import Maker, cache_key
    from workers.running.resultcache import Recipe

    maker = Maker("builtin:tiny-sd", "abc", "cpu", "fp32", True)
    inputs = ("", "txt2img", {"width": 128, "height": 128}, "p", "", 1, None, False, {}, None)
    recipe = Recipe(maker, inputs, 128 * 128)
    assert recipe.key() == cache_key(maker, *inputs)  # normal mode: the key as before
    assert recipe.key(low_memory=True) != recipe.key()
    assert recipe.key("def", low_memory=True) != recipe.key(low_memory=True)


def test_the_tiny_built_ins_need_is_what_the_offload_tests_use():
    tiny = Memory(0.2, 0.5)
    pixels = 64 * 64
    assert fit({"memory": tiny.record()}, "fp32", pixels, 0.1, offload="auto").mode == "group"
    assert not fit({"memory": tiny.record()}, "fp32", pixels, 0.02, offload="auto").fits
