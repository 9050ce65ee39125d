"""Progress shown while a command waits on a job: plain lines, paced, when not on a terminal."""
from __future__ import annotations

import io

import pytest

from cli.progress import Progress, describe


def _doc(done: int, state: str = "running") -> dict:
    return {"state": state, "progress": done / 10, "n_items": 10, "eta_seconds": 10 - done,
            "counts": {"succeeded": done, "running": 1, "failed": 0}, "steps": {"done": done * 4, "total": 40}}


def test_plain_lines_at_most_one_per_interval():
    now = [0.0]
    out = io.StringIO()
    shown = Progress("abcdef0123", out, interval=5.0, tty=False, clock=lambda: now[0])
    for tick in range(200):  # 20 s of polls every 0.1 s
        now[0] = tick * 0.1
        shown.show(_doc(min(10, tick // 20)))
    shown.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 4  # at 0, 5, 10 and 15 s
    assert lines[0] == "job abcdef01 running 0%: items 0/10 done, 1 running, 0 failed, steps 0/40, eta 10s"
    assert lines[-1].startswith("job abcdef01 running 70%: items 7/10 done")


def test_a_terminal_gets_the_live_bar():
    out = io.StringIO()
    shown = Progress("abcdef0123", out, interval=5.0, tty=True)
    for done in range(3):
        shown.show(_doc(done))
    shown.close()
    assert out.getvalue().count("\r") >= 3 and "items 2/10 done" in out.getvalue()


def test_describe_names_the_queue_position():
    assert describe({**_doc(0, "queued"), "eta_seconds": None, "queue_position": 3}).endswith(", 3 ahead")


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="got 0"):
        Progress("x", io.StringIO(), interval=0, tty=False)


def test_the_end_of_the_job_is_always_shown():
    now = [0.0]
    out = io.StringIO()
    shown = Progress("abcdef0123", out, interval=5.0, tty=False, clock=lambda: now[0])
    shown.show(_doc(9))
    now[0] = 1.0  # well within the interval
    shown.show(_doc(10, "succeeded"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("job abcdef01 succeeded 100%: items 10/10 done")
