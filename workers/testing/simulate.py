"""Testing aids that make a CPU worker behave like a GPU in trouble: a device with little memory
(`--debug-oom-pixels`) and a device that breaks for good (`--debug-fatal-after`)."""
from __future__ import annotations

import weakref
from typing import Any

import torch

from sdq import contract

LOW_MEMORY_GAIN = 4
"""How much less memory a call needs in low-memory mode on the simulated device."""

FATAL_MESSAGE = "CUDA error: an illegal memory access was encountered (simulated: --debug-fatal-after {n})"
"""What the simulated sticky device error says (the words of the real CUDA error)."""


class SimulatedMemory:
    """A device whose memory holds `pixels` output pixels per call (`LOW_MEMORY_GAIN` times that in
    low-memory mode).

    A call that does not fit first takes what is left (a real tensor, held by the raising frame, like
    the activations a real call allocated before the allocation that failed) and then raises a real
    `MemoryError`. Whatever still references that frame (the exception's traceback) keeps the memory
    taken: a retry made while it is alive finds less room, as on a real device.
    """

    def __init__(self, pixels: int) -> None:
        self.pixels = pixels
        self.capacity = pixels * LOW_MEMORY_GAIN
        self._taken: list[weakref.ref] = []

    def in_use(self) -> int:
        """Units held by failed calls whose memory has not been freed yet."""
        self._taken = [r for r in self._taken if r() is not None]
        return sum(r().numel() for r in self._taken)

    def call(self, n: int, width: int, height: int, low_memory: bool) -> None:
        """Account for one pipeline call of `n` images of `width` x `height`; raise MemoryError if it
        does not fit."""
        need = n * width * height * (1 if low_memory else LOW_MEMORY_GAIN)
        held = self.in_use()
        if need + held <= self.capacity:
            return
        partial = torch.empty(self.capacity - held, dtype=torch.uint8)  # taken before the failing allocation
        self._taken.append(weakref.ref(partial))
        raise MemoryError(
            f"debug memory budget: {n}x{width}x{height} needs {need} units, {self.capacity - held} of "
            f"{self.capacity} free ({held} still held by an earlier failed call) "
            f"(--debug-oom-pixels {self.pixels}{', low-memory mode' if low_memory else ''})")


class SimulatedFatalError:
    """A device that fails for good from its `after`+1-th pipeline call on, with the sticky error a
    broken CUDA context raises (`torch.AcceleratorError`)."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.calls = 0

    def call(self) -> None:
        """Count one pipeline call; raise the sticky device error once past `after` calls."""
        self.calls += 1
        if self.calls > self.after:
            raise torch.AcceleratorError(FATAL_MESSAGE.format(n=self.after))


class SimulatedDevice:
    """The testing aids a worker was started with, checked before each pipeline call: a device whose
    memory holds `oom_pixels` output pixels per call (`SimulatedMemory`) and one that breaks for good
    after `fatal_after` calls (`SimulatedFatalError`)."""

    def __init__(self, oom_pixels: int | None, fatal_after: int | None) -> None:
        self.memory = SimulatedMemory(oom_pixels) if oom_pixels else None
        self.fatal = SimulatedFatalError(fatal_after) if fatal_after is not None else None

    @classmethod
    def of(cls, oom_pixels: int | None, fatal_after: int | None) -> SimulatedDevice | None:
        """The simulated device, or None when no testing aid is set (a real worker)."""
        return cls(oom_pixels, fatal_after) if oom_pixels or fatal_after is not None else None

    def check(self, task: str, params: dict[str, Any], n: int, low_memory: bool) -> None:
        """Before a call of `n` images of `task` with `params`: raise what the simulated device would."""
        if self.fatal is not None:
            self.fatal.call()
        if self.memory is not None:
            w, h = contract.item_size(task, params)
            self.memory.call(n, w, h, low_memory)
