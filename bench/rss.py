"""Resident memory of this process by phase: a sampler thread reads /proc/self/status every few ms.

`VmRSS` splits into `RssAnon` (memory the process allocated: tensors, the allocator) and `RssFile`
(pages of mapped files: safetensors weights that diffusers maps instead of copying). The split says
whether a peak is memory the model computes with or weight-file pages that are only read once.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

FIELDS = ("VmRSS", "RssAnon", "RssFile")
"""The /proc/self/status lines sampled (kB)."""

INTERVAL_S = 0.01
"""Sampling period (a load's peak lasts seconds; a step's, at least tens of ms)."""


def status(path: Path = Path("/proc/self/status")) -> dict[str, float]:
    """The sampled fields, in GiB (empty where /proc is not there)."""
    out: dict[str, float] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in FIELDS:
            out[key] = int(value.split()[0]) / 2**20
    return out


class RssSampler:
    """Peak `VmRSS`, `RssAnon` and `RssFile` per named phase (`phase(name)` starts the next one)."""

    def __init__(self) -> None:
        self.current = "start"
        self.peaks: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(INTERVAL_S)

    def _sample(self) -> None:
        peaks = self.peaks.setdefault(self.current, {})
        for key, gb in status().items():
            peaks[key] = max(peaks.get(key, 0.0), gb)

    def phase(self, name: str) -> None:
        """Close the current phase (one last sample) and start `name`."""
        self._sample()
        self.current = name
        self._sample()

    def stop(self) -> dict[str, dict[str, float]]:
        """Stop sampling; each phase's peaks in GiB, rounded (the peak of `VmRSS`, not the sum of the others)."""
        self._sample()
        self._stop.set()
        self._thread.join()
        return {p: {k: round(v, 2) for k, v in peaks.items()} for p, peaks in self.peaks.items()}
