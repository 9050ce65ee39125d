"""When an idle worker looks for stragglers and when a running item is expected to end
(sdq/scheduling/watch.py), as pure functions."""
from __future__ import annotations

import pytest

from sdq.scheduling import scheduling, watch
from sdq.scheduling.watch import MIN_PACE_STEPS, next_check, pace_end, run_seconds


def test_the_cold_estimate_holds_until_a_few_steps_have_run():
    # published: 1 s (a fresh worker counted as a typical one); it has run 2 steps of 20 in 2 s
    assert pace_end(100.0, 102.0, MIN_PACE_STEPS - 1, 20, cold_end=101.0) == 101.0
    assert pace_end(100.0, 100.0, 0, 20, cold_end=101.0) == 101.0


def test_the_step_pace_gives_the_end_once_a_few_steps_have_run():
    # 4 of 20 steps in 2 s: 10 s in all, however optimistic the published estimate was
    assert pace_end(100.0, 102.0, 4, 20, cold_end=101.0) == pytest.approx(110.0)
    # a worker faster than published is believed too
    assert pace_end(100.0, 101.0, 10, 20, cold_end=120.0) == pytest.approx(102.0)
    assert run_seconds(100.0, 102.0, 4, 20, expected_s=1.0) == pytest.approx(10.0)
    assert run_seconds(100.0, 100.5, 1, 20, expected_s=1.0) == pytest.approx(1.0)


def test_a_count_beyond_the_total_ends_now():
    assert pace_end(100.0, 103.0, 25, 20, cold_end=101.0) == pytest.approx(103.0)


def test_a_worker_much_slower_than_its_cold_estimate_is_backed_up_after_a_few_steps():
    # an idle fast worker makes the item in 1 s; the newcomer was taken for as fast, and shows 20 s
    now, since = 101.5, 100.0
    cold = scheduling.expected_end(since, 1.0, now)  # overdue by 0.5 s: "as long again" -> 103.0
    paced = pace_end(since, now, 3, 40, cold)
    assert paced == pytest.approx(120.0)
    fresh = 1.0
    running = [scheduling.Running("j", 0, "slow", paced)]
    assert scheduling.straggler(running, now, fresh) == running[0]


def test_an_idle_worker_polls_only_while_it_watches_items():
    assert next_check(0, None, 10.0) is None
    assert next_check(2, None, 10.0) == watch.IDLE_POLL_S
    assert next_check(1, None, 10.0, poll_s=0.5) == 0.5


def test_an_item_coming_of_age_for_a_backup_is_looked_at_then():
    assert next_check(1, 10.05, 10.0) == pytest.approx(0.05)
    assert next_check(1, 9.0, 10.0) == 0.0
    assert next_check(1, 50.0, 10.0) == watch.IDLE_POLL_S


def test_the_poll_is_sub_second():
    assert watch.IDLE_POLL_S < 1.0 and watch.EVENT_MIN_GAP_S < watch.IDLE_POLL_S


def test_step_progress_is_written_often_enough_to_show_a_pace():
    from sdq import defaults

    assert defaults.PROGRESS_INTERVAL <= watch.IDLE_POLL_S * 2


def test_the_gpu_timescale_simulation_is_within_ten_percent_of_the_best_schedule_now_and_was_not_before():
    from bench import gpusim

    rows = gpusim.run_cases(quick=True)
    assert max(r["now"]["vs_best"] for r in rows) <= 1.10, gpusim.table(rows)
    joined = [r for r in rows if "joins" in r["fleet"]]
    assert joined and all(r["now"]["backups"] >= 1 for r in joined)
    assert max(r["today"]["vs_best"] for r in joined) > 2.0  # the heartbeat-paced policy of before


def test_a_backup_decision_reads_the_pace_of_the_items_steps():
    from workers.running.backups import run_seconds

    cur = {"pipeline": "txt2img", "params": {"width": 256, "height": 256, "steps": 20}, "since": 100.0,
           "expected_s": 1.0, "running": [3]}
    assert run_seconds(cur, {3: 1}, 102.0) == pytest.approx(1.0)  # one step: as published
    assert run_seconds(cur, {3: 4}, 102.0) == pytest.approx(10.0)  # four steps in 2 s: 10 s in all
    cur2 = {**cur, "pipeline": "img2img", "params": {**cur["params"], "strength": 0.5}}  # 10 steps really run
    assert run_seconds(cur2, {3: 8}, 102.0) == pytest.approx(5.0)  # 8 of 20 counted = 4 of 10 run
