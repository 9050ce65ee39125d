"""A job's progress while a command waits on it: a live bar on a terminal, plain lines elsewhere.

On a terminal, tqdm redraws one line in place. Written to a file, a pipe or a CI log, those redraws
are carriage returns that pile up on one line, so there the progress is one plain line at most
every `interval` seconds instead.
"""
from __future__ import annotations

import time
from typing import IO, Any, Callable

from sdq import defaults
from sdq.contract import TERMINAL_STATES


def describe(doc: dict[str, Any]) -> str:
    """A job's progress in words: items, steps, ETA and place in the queue."""
    c = doc["counts"]
    steps = doc.get("steps") or {}
    eta = doc.get("eta_seconds")
    ahead = doc.get("queue_position")
    return (f"items {c['succeeded']}/{doc['n_items']} done, {c['running']} running, {c['failed']} failed, "
            f"steps {steps.get('done', 0)}/{steps.get('total', 0)}"
            + (f", eta {eta:.0f}s" if eta else "") + (f", {ahead} ahead" if ahead else ""))


class Progress:
    """Shows a job's status documents on `stream` as they are polled; `close()` when it ends."""

    def __init__(self, job_id: str, stream: IO[str], interval: float = defaults.CLI_PROGRESS_INTERVAL,
                 tty: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if interval <= 0:
            raise ValueError(f"progress interval must be > 0 seconds, got {interval}")
        self.job_id, self.stream, self.interval, self.clock = job_id, stream, interval, clock
        self.tty = stream.isatty() if tty is None else tty
        self.last: float | None = None
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, unit="‰", file=stream, dynamic_ncols=True,
                            bar_format="{desc} |{bar}| {percentage:3.0f}%{postfix}")

    def show(self, doc: dict[str, Any]) -> None:
        """Show one status document (the bar is redrawn; a plain line once per interval, and at the end)."""
        if self.bar is not None:
            self.bar.set_description_str(f"{self.job_id[:8]} {doc['state']}")
            self.bar.set_postfix_str(describe(doc))
            self.bar.n = int(doc["progress"] * 1000)
            self.bar.refresh()
            return
        now = self.clock()
        final = doc["state"] in TERMINAL_STATES  # the last line always shows how the job ended
        if not final and self.last is not None and now - self.last < self.interval:
            return
        self.last = now
        print(f"job {self.job_id[:8]} {doc['state']} {int(doc['progress'] * 100)}%: {describe(doc)}",
              file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar (plain lines need no ending)."""
        if self.bar is not None:
            self.bar.close()
