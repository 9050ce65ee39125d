"""Progress while a model loads: a long load (a large checkpoint from a slow disk, a move to the device)
reports progress, so the worker's leases stay renewed and it does not look hung (`workers.fleet.leases`).

Only for a bounded time: a load that has not ended after `LOAD_PROGRESS_MAX_S` stops reporting, and the
worker counts as stalled again (its items go to another worker), as a hung step would.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

LOAD_PROGRESS_EVERY_S = 5.0
"""Seconds between progress reports while a model loads."""

LOAD_PROGRESS_MAX_S = 1800.0
"""Longest load that counts as progress, seconds (a longer one is treated as hung)."""


@contextmanager
def progress_while(report: Callable[[], None] | None, every: float = LOAD_PROGRESS_EVERY_S,
                   most: float = LOAD_PROGRESS_MAX_S) -> Iterator[None]:
    """Call `report()` every `every` seconds while the block runs, for at most `most` seconds (None: nothing)."""
    if report is None:
        yield
        return
    stop = threading.Event()
    deadline = time.monotonic() + most

    def tick() -> None:
        while not stop.wait(every) and time.monotonic() < deadline:
            report()

    thread = threading.Thread(target=tick, name="sdq-load-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
