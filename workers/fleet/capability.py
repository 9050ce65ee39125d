"""The worker's capability record and the heartbeat that keeps it (and its held message) fresh."""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from sdq import __version__, defaults
from sdq.models import BUILTIN_MODELS, allowed_models
from sdq.records import WorkerRecord
from sdq.celery_app import flush_outbox
from sdq.state.errors import StateError
from sdq.state.store import JobStore
from sdq.pipelines import PIPELINES
from workers.loading.device import Device, peak_rss_gb
from workers.fleet.leases import Leases
from workers.fleet.reaper import Reaper, safe_tick
from workers.running.routing import Publish
from workers.running.speedometer import Speedometer

log = logging.getLogger(__name__)


@dataclass
class Activity:
    """What the worker is doing now and how fast it works: written by the runner, published with the
    capability record."""

    current: dict[str, Any] | None = None
    items_done: int = 0
    speed: Speedometer | None = None


class Capability:
    """What this worker can do, as published in the fleet."""

    def __init__(self, name: str, device: Device, models: list[str], max_pixels: int, max_batch: int,
                 queues: list[str], threads: int | None, activity: Activity | None = None,
                 loaded: Callable[[], list[str]] | None = None,
                 adapters: Callable[[], dict[str, list[str]]] | None = None,
                 quantized: Callable[[], dict[str, str]] | None = None, offload: str = "never",
                 offloaded: Callable[[], dict[str, str]] | None = None,
                 held: Callable[[], dict[str, float]] | None = None) -> None:
        self.name, self.device = name, device
        self.models, self.max_pixels, self.max_batch = models, max_pixels, max_batch
        self.queues, self.threads = queues, threads
        self.activity = activity or Activity()
        self.loaded = loaded or list
        self.adapters = adapters or dict  # model id -> LoRA adapter ids loaded into it
        self.quantized = quantized or dict  # loaded model id -> how its weights are quantized ("gguf Q8_0")
        self.offload = offload  # `--offload` as it applies to this device: never, auto, model, group
        self.offloaded = offloaded or dict  # loaded model id -> the offload mode it runs in now
        self.held = held or dict  # loaded model id -> GiB of weights options hold beside it (ControlNets)
        self.host = socket.gethostname()
        self.started_at = time.time()

    def pipelines(self) -> list[str]:
        """Pipelines some allowed model of this worker can run."""
        out: list[str] = []
        for model in self.models:
            for p in BUILTIN_MODELS.get(model, PIPELINES):
                if p not in out:
                    out.append(p)
        return out

    def record(self) -> WorkerRecord:
        """The capability record, measured now."""
        total, free = self.device.memory_gb()
        return WorkerRecord(
            name=self.name, host=self.host, device=self.device.device, kind=self.device.kind,
            device_name=self.device.name, dtype=self.device.dtype, backend=self.device.backend,
            cpu_path=self.device.cpu_path.record() if self.device.cpu_path is not None else None,
            memory_total_gb=total, memory_free_gb=free, peak_rss_gb=peak_rss_gb(),
            pipelines=self.pipelines(),
            models=self.models, loaded_models=self.loaded(), loaded_adapters=self.adapters(),
            quantized=self.quantized(), offload=self.offload, offloaded_models=self.offloaded(),
            held_gb=self.held(),
            max_pixels=self.max_pixels, max_batch=self.max_batch, queues=self.queues,
            threads=self.threads, items_done=self.activity.items_done,
            speed=self.activity.speed.snapshot() if self.activity.speed else {},
            current_item=self.activity.current,
            started_at=self.started_at, last_seen=time.time(), version=__version__,
        )


def worker_models(requested: list[str] | None, allowlist: tuple[str, ...]) -> list[str]:
    """Models this worker may load: `--models` (each must be allowed) or everything allowed."""
    allowed = allowed_models(allowlist)
    if not requested:
        return allowed
    unknown = [m for m in requested if m not in allowed]
    if unknown:
        from sdq.exceptions import CapabilityError

        raise CapabilityError(f"--models names {', '.join(unknown)}, which SDQ_MODELS does not allow; "
                              f"allowed: {', '.join(allowed)}")
    return requested


class Heartbeat(threading.Thread):
    """Every `interval` seconds until stopped: publish the capability record (alive `ttl` seconds),
    refresh the leases on the broker messages this worker holds (`workers.fleet.leases`), publish the
    outbox entries that are due (`sdq.state.outbox`: re-queued items and passed-on chunks whose writer
    did not publish them, or whose delay is over), and give the reaper its turn (`workers.fleet.reaper`).
    Straggler backups are `workers.fleet.idlewatch`'s."""

    def __init__(self, jobs: JobStore, capability: Capability,
                 interval: float = defaults.HEARTBEAT_INTERVAL, leases: Leases | None = None,
                 reaper: Reaper | None = None,
                 ttl: int = defaults.HEARTBEAT_TTL, publish_chunk: Publish | None = None) -> None:
        super().__init__(name="sdq-heartbeat", daemon=True)
        self.jobs, self.capability, self.interval = jobs, capability, interval
        self.leases, self.reaper, self.ttl = leases, reaper, ttl
        self.publish_chunk = publish_chunk
        self.stopped = threading.Event()
        self._due: float | None = None  # `publish_by`: when the record is due (time.time()), if not published first
        self._wake = threading.Event()  # a new due time, or the stop

    def publish(self) -> None:
        """Publish the capability record now. A worker whose work made no progress for its stall timeout
        says `stalled`: the items it holds count as lost (a duplicate delivery takes them over)."""
        self._due = None  # the record published shows what the worker does now, whatever was due
        record = self.capability.record()
        if self.leases is not None and self.leases.stalled():
            record.stalled = True
        self.jobs.publish_worker(record, self.ttl)

    def beat(self) -> None:
        """Publish once, refresh the held messages, publish the chunks whose delay is over, sweep
        if it is this worker's turn (the record's publication also wakes idle workers' `workers.fleet.idlewatch`)."""
        try:
            self.publish()
        finally:
            if self.leases is not None:
                self.leases.refresh()
        if self.publish_chunk is not None:
            flush_outbox(self.jobs, self.jobs.outbox, self.publish_chunk)
        safe_tick(self.reaper)

    def publish_by(self, due: float) -> None:
        """Publish the record at `due` (a `time.time()`) unless a publication comes first; a later call
        moves the time. The runner defers the record of a batch too short to be backed up: when the
        batch ends before `due`, the record is never sent for it."""
        first = self._due is None
        self._due = due
        if first:
            self._wake.set()

    def run(self) -> None:
        next_beat = time.monotonic() + self.interval
        while not self.stopped.is_set():
            due = self._due
            wait = next_beat - time.monotonic()
            if due is not None:
                wait = min(wait, due - time.time())
            if self._wake.wait(max(0.0, wait)):
                self._wake.clear()
                continue  # a new due time (or the stop): work out the wait again
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.interval
                    self.beat()
                elif self._due is not None and time.time() >= self._due:
                    self.publish()
            except Exception:  # noqa: BLE001 - a Redis hiccup must not kill the heartbeat
                log.exception("heartbeat failed")

    def stop(self) -> None:
        """Stop beating and leave the fleet."""
        self.stopped.set()
        self._wake.set()
        try:
            self.jobs.remove_worker(self.capability.name)
        except StateError:
            pass
