"""The runner's parts, grouped as `workers.app` builds them; the mode a run is made in and how it
stops on items."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

from sdq import defaults
from sdq.state.store import JobStore
from storage import ResultStore
from workers.fleet.capability import Activity
from workers.testing.faults import Faults
from workers.fleet.leases import Leases
from workers.running.resultcache import CachedResults
from workers.running.routing import Publish, Router
from workers.running.uploader import Uploader


@dataclass(frozen=True)
class Outputs:
    """Where the runner records items and stores results."""

    jobs: JobStore
    store: ResultStore  # init images are read from it; results go through the uploader
    uploader: Uploader
    finalize: Callable[[str], None]  # queues an ended job's finalize task
    results: CachedResults | None = None  # the result cache (None: off)


@dataclass(frozen=True)
class Presence:
    """How the runner takes part in the fleet: where chunks go and what the others see of it."""

    router: Router
    publish: Publish  # sends a chunk to its queue (or to one worker's own)
    leases: Leases
    activity: Activity  # current chunk and items made, published in the capability record
    announce: Callable[[], None]  # publishes the capability record (idle again)
    announce_by: Callable[[float], None]  # publishes it at a time (a `time.time()`) unless published first


@dataclass(frozen=True)
class RunOptions:
    """How the runner runs: micro-batch size, attempts per item, and the testing aids."""

    faults: Faults
    max_batch: int = 1
    max_attempts: int = defaults.MAX_ATTEMPTS
    debug_oom_pixels: int | None = None  # behave like a device that holds this many pixels per call
    debug_fatal_after: int | None = None  # behave like a device that breaks for good after N calls


@dataclass(frozen=True)
class Normal:
    """A chunk's own run: it settles its items (stored, failed, cancelled, handed off). Like a backup,
    it claims each result before storing it (`JobStore.claim_result`)."""


@dataclass(frozen=True)
class Backup:
    """A straggler backup (`workers.running.backups`) of item `index` of `job`, running on `original_worker`:
    it stores the item only if it claims it first, and settles nothing else (the original run owns it)."""

    job: str
    index: int
    original_worker: str


Mode = Union[Normal, Backup]
"""How a run treats its items."""

NORMAL = Normal()


@dataclass(frozen=True)
class Failed:
    """Items this run ends `failed` with `error` (`extra`: item fields to keep, e.g. the out-of-memory ones)."""

    error: str
    extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class Cancelled:
    """Items of a cancelled job this run ends `cancelled`."""


@dataclass(frozen=True)
class OutOfMemoryEnd:
    """A batch out of memory even in low-memory mode: handed to another worker, or failed (`Router.after_oom`)."""

    error: str
    extra: dict[str, Any]


Outcome = Union[Failed, Cancelled, OutOfMemoryEnd]
"""How a run stops on some items before storing them."""
