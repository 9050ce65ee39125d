"""The mixed-fleet policy (sdq/scheduling/scheduling.py, sdq/scheduling/speed.py) as pure functions, and the simulator
that drives it (bench/sim.py)."""
from __future__ import annotations

import pytest

from bench import sim
from sdq.records import WorkerRecord
from sdq.scheduling import scheduling, speed
from sdq.scheduling.scheduling import Running, chunk_sizes, claim_count, straggler

PARAMS = {"width": 512, "height": 512, "steps": 20}


def test_equal_workers_get_the_count_based_chunk_sizes():
    assert chunk_sizes(500, [3.0, 3.0]) == chunk_sizes(500, [1.0, 1.0])
    assert chunk_sizes(500, [1.0, 1.0])[0] == 32 and chunk_sizes(500, [1.0, 1.0])[-1] == 1


def test_slow_workers_shrink_chunks_only_by_their_speed():
    # one fast worker plus four at 1/20 count as 1.2 fastest workers, not 5
    assert chunk_sizes(100, [1.0] + [0.05] * 4)[0] == 21
    assert chunk_sizes(100, [1.0] * 5)[0] == 5


def test_the_fastest_worker_takes_whole_chunks():
    assert claim_count(1.0, [0.05] * 4, backlog=3, chunk=3) == 3


def test_a_slow_worker_takes_its_share_and_leaves_the_rest():
    # 100 queued, fleet rate 1.2: in the time the fleet needs, the 1/20 worker makes 4 items
    assert claim_count(0.05, [1.0, 0.05, 0.05, 0.05], backlog=100, chunk=21) == 4


def test_a_slow_worker_leaves_the_tail_to_faster_workers():
    # 10 queued: the fast worker drains them in 10 s, one slow item takes 20 s
    assert claim_count(0.05, [1.0], backlog=10, chunk=2) == 0
    # 30 queued: the fast worker needs 30 s, longer than one slow item: the slow one helps
    assert claim_count(0.05, [1.0], backlog=30, chunk=2) == 1


def test_items_a_faster_worker_is_making_count_as_work_ahead_of_it():
    assert claim_count(1 / 3, [1.0] * 20, backlog=59, chunk=1) == 0
    assert claim_count(1 / 3, [1.0] * 20, backlog=59, chunk=1, held=[1] * 20) == 1


def test_the_items_a_batching_worker_holds_count_in_full():
    # a fast worker holding 16 claimed items leaves the slow one a share of them too, not of 1
    assert claim_count(0.25, [1.0], backlog=16, chunk=16, held=[16]) == 6
    assert claim_count(0.25, [1.0], backlog=16, chunk=16, held=[1]) == 3


def test_equal_workers_never_leave_work_to_each_other():
    assert claim_count(1.0, [1.2, 0.9], backlog=1, chunk=1) == 1


def test_the_straggler_is_the_latest_item_a_fresh_run_would_beat():
    running = [Running("j", 0, "a", 105.0), Running("j", 1, "b", 130.0), Running("j", 2, "c", 101.0)]
    assert straggler(running, now=100.0, fresh_run_s=2.0).index == 1
    assert straggler(running, now=100.0, fresh_run_s=25.0) is None  # nothing ends late enough


def test_an_overdue_run_is_assumed_to_need_as_long_again():
    assert scheduling.expected_end(since=100.0, expected_s=5.0, now=103.0) == 105.0
    assert scheduling.expected_end(since=100.0, expected_s=5.0, now=110.0) == 120.0


def test_claimed_items_are_expected_one_by_one_after_the_running_batch():
    # a batch of 2 expected to take 4 s: each later item 2 s after the one before
    assert scheduling.claimed_ends(since=100.0, expected_s=4.0, running=2, claimed=2, now=101.0) == [106.0, 108.0]
    # overdue (running 10 s): the batch ends 10 s from now, later items at the pace it shows, 5 s each
    assert scheduling.claimed_ends(since=100.0, expected_s=4.0, running=2, claimed=2, now=110.0) == [125.0, 130.0]


def test_the_items_a_worker_holds_after_its_running_batch():
    from sdq.state.fleet import claimed_after, held

    assert claimed_after({"items": [4, 5, 6, 7], "running": [5]}) == [6, 7]
    assert claimed_after({"items": [4, 5, 6, 7], "running": [6, 7]}) == []
    assert claimed_after({"items": [4], "running": [9]}) == []  # nothing known to come after
    assert held({"items": [4, 5, 6, 7], "running": [5]}, now=0) == 3
    # a batch of 2 expected to take 4 s, 3 s along: a quarter of it is ahead
    assert held({"items": [4, 5, 6], "running": [4, 5], "since": 100.0, "expected_s": 4.0}, now=103.0) == 1.5
    assert held({"items": [4, 5, 6], "running": []}, now=0) == 3  # claimed, the model still loading
    assert held({"items": [4, 5], "running": [4], "since": 100.0, "expected_s": 4.0}, now=103.0) == 2  # one: whole
    assert held(None, now=0) == 0


def test_work_counts_the_steps_really_run_and_the_output_pixels():
    assert speed.item_work("txt2img", PARAMS) == pytest.approx(20 * 512 * 512 / 1e6)
    assert speed.item_work("img2img", {**PARAMS, "strength": 0.5}) == pytest.approx(10 * 512 * 512 / 1e6)
    assert speed.item_work("upscale", {**PARAMS, "width": 128, "height": 128}) == pytest.approx(20 * 512 * 512 / 1e6)


def test_an_unmeasured_worker_counts_as_a_typical_one_of_its_kind():
    key = speed.speed_key("m", "txt2img", 512 * 512)
    records = [WorkerRecord(name="a", kind="cpu", speed={key: {"rate": 0.4, "n": 3}}),
               WorkerRecord(name="b", kind="cpu"), WorkerRecord(name="g", kind="gpu")]
    rates = speed.fleet_rates(records, "m", "txt2img", PARAMS)
    assert rates == {"a": 0.4, "b": 0.4, "g": 0.4}  # no GPU measured: the fleet's mean
    assert speed.worker_rate(records[2], "m", "txt2img", PARAMS) == speed.COLD_RATE["gpu"]


def test_the_simulated_policy_stays_near_the_best_schedule():
    out = sim.run(type("Opts", (), {"quick": True})())
    for t in out["targets"]:
        assert t["met"], t
    worst_count = max(r["count"]["vs_optimum"] for r in out["rows"])
    assert worst_count > 1.5  # the cases are hard for the count policy: the check above means something


def test_backups_take_over_the_items_a_silently_slow_worker_claimed():
    out = sim.run(type("Opts", (), {"quick": True})())
    liars = [r for r in out["rows"] if r["fleet"] in sim.PUBLISHED and r["items"] >= 100]
    assert liars and all(r["speed"]["vs_optimum"] > 1.5 for r in liars)  # without backups it drags the job
    assert all(r["speed+backups"]["vs_optimum"] <= 1.10 for r in liars), liars


def test_a_slow_first_call_is_outweighed_soon_then_rates_are_smoothed():
    from workers.running.speedometer import SMOOTHING, Speedometer

    meter = Speedometer("cpu")
    work = speed.item_work("txt2img", PARAMS)
    meter.observe("m", "txt2img", PARAMS, 1, 4 * work)  # warm-up call: rate 0.25
    meter.observe("m", "txt2img", PARAMS, 1, work)  # steady: rate 1.0
    assert meter.rate("m", "txt2img", PARAMS) == pytest.approx(0.625)  # plain mean of the two
    for _ in range(20):
        meter.observe("m", "txt2img", PARAMS, 1, work)
    assert meter.rate("m", "txt2img", PARAMS) == pytest.approx(1.0, abs=0.01)
    meter.observe("m", "txt2img", PARAMS, 1, 2 * work)  # one slow call later moves it by SMOOTHING
    assert meter.rate("m", "txt2img", PARAMS) == pytest.approx(1.0 - SMOOTHING * 0.5, abs=0.01)
    key = speed.speed_key("m", "txt2img", PARAMS["width"] * PARAMS["height"])
    assert (meter.snapshot()[key]["width"], meter.snapshot()[key]["height"]) == (512, 512)  # the size measured at
