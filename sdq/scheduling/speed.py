"""How much work an item is and how fast a worker makes it: the speed model shared by the
producer (chunk sizes), the workers (claiming, straggler backups) and the fleet simulator.

Torch-free. Work is counted in *megapixel-steps*: denoising steps the pipeline really runs times
the output megapixels. A worker measures its own rate (megapixel-steps per second) for each
(model, pipeline, pixel class) it has run and publishes it in its capability record under
``speed``. A worker that has not run a kind of item yet counts as a typical worker of its device
kind (`fleet_rates`), or runs at the conservative rate of its kind (`COLD_RATE`) when nobody has
measured one.
"""
from __future__ import annotations

from typing import Any

from sdq import contract, options
from sdq.records import WorkerRecord

COLD_RATE = {"cpu": 0.1, "gpu": 2.0}
"""Megapixel-steps per second assumed for a worker that has not measured itself yet, by device
kind (conservative: an SD 1.5 512x512 step takes ~3 s on a CPU in fp32 and well under 0.1 s on a
current GPU in fp16)."""


def loop_steps(pipeline: str, params: dict[str, Any]) -> int:
    """How many denoising steps the pipeline really runs (img2img/depth2img: `steps * strength`)."""
    return options.loop_steps(pipeline, params)


def item_work(pipeline: str, params: dict[str, Any]) -> float:
    """The work one item of these parameters costs, in megapixel-steps (each pass of a hires fix at its size)."""
    return options.work(pipeline, params)


def speed_key(model: str, pipeline: str, pixels: int) -> str:
    """Key of a measured rate in a capability record's ``speed``: ``model|pipeline|pixel class``."""
    return f"{model}|{pipeline}|{contract.pixel_class(pixels)}"


def worker_rate(record: WorkerRecord, model: str, pipeline: str, params: dict[str, Any]) -> float:
    """Megapixel-steps per second a worker (its capability record) makes items of this kind at:
    its measured rate, or the cold rate of its device kind."""
    return measured_rate(record, model, pipeline, params) or COLD_RATE.get(record.kind or "cpu", COLD_RATE["cpu"])


def measured_rate(record: WorkerRecord, model: str, pipeline: str, params: dict[str, Any]) -> float | None:
    """A worker's measured rate for items of this kind, or None before it made one."""
    w, h = contract.item_size(pipeline, params)
    measured = (record.speed or {}).get(speed_key(model, pipeline, w * h))
    return float(measured["rate"]) if measured and measured.get("rate") else None


def fleet_rates(records: list[WorkerRecord], model: str, pipeline: str,
                params: dict[str, Any]) -> dict[str, float]:
    """Each worker's rate for items of this kind, by name: measured; for a worker that has not made
    such an item yet, the mean measured rate of its device kind (else of the whole fleet, else the
    cold rate of its kind), so an unmeasured worker counts as a typical one, neither faster nor slower."""
    measured = {r.name: measured_rate(r, model, pipeline, params) for r in records}
    known = [(r.kind or "cpu", measured[r.name]) for r in records if measured[r.name]]
    out: dict[str, float] = {}
    for r in records:
        kind = r.kind or "cpu"
        same = [v for k, v in known if k == kind] or [v for _, v in known]
        out[r.name] = measured[r.name] or (sum(same) / len(same) if same else COLD_RATE.get(kind, COLD_RATE["cpu"]))
    return out


def expected_seconds(record: WorkerRecord, model: str, pipeline: str, params: dict[str, Any],
                     n_items: int = 1) -> float:
    """Seconds a worker is expected to take for `n_items` items of this kind."""
    return n_items * item_work(pipeline, params) / worker_rate(record, model, pipeline, params)
