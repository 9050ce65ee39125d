"""The worker's own speed, measured on the items it makes and published in its capability record."""
from __future__ import annotations

import threading
from typing import Any

from sdq import contract
from sdq.records import WorkerRecord
from sdq.scheduling import speed

SMOOTHING = 0.3
"""Weight of the newest measurement in the running average of a rate (exponential smoothing). The
first few calls are averaged plainly (weight: the call's share of the images so far, while larger),
so one slow first call (warm-up) is outweighed soon."""


class Speedometer:
    """Rates (megapixel-steps per second of pipeline time) per (model, pipeline, pixel class),
    smoothed; written by the runner after each pipeline call, read by the heartbeat and the router."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._rates: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def observe(self, model: str, pipeline: str, params: dict[str, Any], n_images: int, seconds: float) -> None:
        """Record one pipeline call that made `n_images` images in `seconds` (load time excluded)."""
        if seconds <= 0 or n_images <= 0:
            return
        w, h = contract.item_size(pipeline, params)
        rate = n_images * speed.item_work(pipeline, params) / seconds
        key = speed.speed_key(model, pipeline, w * h)
        with self._lock:
            old = self._rates.get(key)
            if old is None:
                old = self._rates[key] = {"rate": round(rate, 4), "n": n_images}
            else:
                old["n"] += n_images
                weight = max(SMOOTHING, n_images / old["n"])
                old["rate"] = round((1 - weight) * old["rate"] + weight * rate, 4)
            # the latest output size of this kind, for people: steps/s and seconds per image at it
            old["width"], old["height"] = w, h

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The measured rates, as published in the capability record's ``speed``."""
        with self._lock:
            return {k: dict(v) for k, v in self._rates.items()}

    def knows(self, model: str, pipeline: str, params: dict[str, Any]) -> bool:
        """Whether this worker has measured itself on items of this kind."""
        w, h = contract.item_size(pipeline, params)
        with self._lock:
            return speed.speed_key(model, pipeline, w * h) in self._rates

    def rate(self, model: str, pipeline: str, params: dict[str, Any]) -> float:
        """This worker's rate for items of this kind: measured, or the cold rate of its device kind."""
        return speed.worker_rate(WorkerRecord(kind=self.kind, speed=self.snapshot()), model, pipeline, params)
