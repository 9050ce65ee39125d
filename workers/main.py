"""`sdq worker`: one process bound to one device, consuming the queues it can serve."""
from __future__ import annotations

from sdq.config import Settings
from workers.app import WorkerOptions, build_worker

__all__ = ["WorkerOptions", "run_worker"]


def run_worker(settings: Settings, opts: WorkerOptions) -> int:
    """Build the worker from its options (`workers.app`), then serve until it is stopped."""
    return build_worker(settings, opts).serve()
