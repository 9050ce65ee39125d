"""The contract producer and workers share: states, task names, pipelines and queue routing.

Torch-free: the producer imports it without any ML library installed.

Routing design (see README "Routing"): a queue name is
``sdq.<device>.<dtype>.<pixel class>``, e.g. ``sdq.cpu.any.p512``.

- ``device`` is what an item requires: ``any``, ``gpu`` or ``cpu``;
- ``dtype`` is the required dtype, or ``any``;
- the pixel class is the smallest class in `PIXEL_CLASSES` that holds width*height.

A worker consumes every queue it can serve: device in {any, its kind}, dtype in {any, its dtype}
and every pixel class up to its ``--max-pixels``. The producer sends an item to the one queue
named by its requirements, so any worker listening there can make it.
"""
from __future__ import annotations

from sdq import options, pipelines

TASK_GENERATE = "sdq.generate"
"""Celery task: generate one chunk of items of one job."""

TASK_WEBHOOK = "sdq.webhook"
"""Celery task: deliver a job's webhook."""

CONTROL_QUEUE = "sdq.control"
"""Queue every worker consumes for housekeeping tasks (webhooks)."""

ITEM_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
"""States of an item; a job goes through the same ones."""
TERMINAL_STATES = ("succeeded", "failed", "cancelled")

PIPELINES = pipelines.PIPELINES
"""Pipelines the API knows (each one's spec is `sdq.pipelines.SPECS[name]`)."""

SAMPLER_NAMES = pipelines.SAMPLER_NAMES
"""Scheduler name -> A1111 sampler name (the table is `sdq.pipelines.SCHEDULERS`)."""

SCHEDULERS = tuple(pipelines.SCHEDULERS)
"""Scheduler names accepted in `params.scheduler`."""

DEVICES = ("any", "gpu", "cpu")
DTYPES = ("fp16", "bf16", "fp32")

PIXEL_CLASSES: tuple[tuple[str, int], ...] = (
    ("p256", 256 * 256),
    ("p512", 512 * 512),
    ("p768", 768 * 768),
    ("p1024", 1024 * 1024),
    ("p2048", 2048 * 2048),
    ("p4096", 4096 * 4096),
)
"""Pixel classes: (name, most pixels per image)."""


WATERMARK_MIN_PIXELS = 256 * 256
"""Smallest image (width * height) the invisible watermark can mark or read."""


def pixel_class(pixels: int) -> str:
    """Name of the smallest pixel class holding `pixels` pixels."""
    for name, limit in PIXEL_CLASSES:
        if pixels <= limit:
            return name
    raise ValueError(f"{pixels} pixels exceed the largest pixel class ({PIXEL_CLASSES[-1][1]})")


def queue_for(device: str, dtype: str | None, pixels: int) -> str:
    """The queue an item with these requirements is sent to."""
    return f"sdq.{device}.{dtype or 'any'}.{pixel_class(pixels)}"


def worker_kind(device: str) -> str:
    """`cpu` for a CPU device, `gpu` for cuda/cuda:N/mps: the device part of the queues a worker serves."""
    return "cpu" if device == "cpu" else "gpu"


def queues_for_worker(device: str, dtype: str, max_pixels: int) -> list[str]:
    """Every queue a worker with this device, dtype and pixel limit can serve, largest first."""
    names = [name for name, limit in PIXEL_CLASSES if limit <= max_pixels] or [PIXEL_CLASSES[0][0]]
    queues = [
        f"sdq.{dev}.{dt}.{px}"
        for px in reversed(names)
        for dev in (worker_kind(device), "any")
        for dt in (dtype, "any")
    ]
    return queues


def item_queues() -> list[str]:
    """Every shared queue an item can be sent to (`queue_for` of every device, dtype and pixel class)."""
    return [f"sdq.{dev}.{dt}.{px}" for dev in DEVICES for dt in ("any", *DTYPES) for px, _ in PIXEL_CLASSES]


def worker_queue(name: str) -> str:
    """The queue only the worker `name` consumes (its straggler backups)."""
    return f"sdq.worker.{name}"


def celery_priority(priority: int) -> int:
    """API priority (9 most urgent) to Redis transport priority (0 most urgent)."""
    return 9 - max(0, min(9, int(priority)))


def output_size(pipeline: str, width: int, height: int) -> tuple[int, int]:
    """Size of the image a pipeline makes from `width` x `height` (input size for upscale)."""
    return pipelines.spec(pipeline).output_size(width, height)


def item_size(pipeline: str, params: dict) -> tuple[int, int]:
    """Size of the image an item with these parameters makes (the hires fix's larger size when set):
    the size its pixel class, queue, limits and work are counted at."""
    return options.final_size(pipeline, params)


def result_key(job_id: str, index: int) -> str:
    """S3 key of an item's PNG."""
    return f"jobs/{job_id}/{index:05d}.png"


def manifest_key(job_id: str) -> str:
    """S3 key of a job's manifest."""
    return f"jobs/{job_id}/manifest.json"
