"""Testing aid: make a worker stop, fail or die at a named point, observably.

Off unless the worker's environment sets `SDQ_DEBUG_FAULTS=1` (then every `Faults.hit` costs one
Redis read; in production it costs nothing). Rules live in Redis so a test can aim them at
running workers: hash ``sdq:debug:faults`` (every worker) or ``sdq:debug:faults:<worker>`` maps a
POINT (one of `POINTS`) to an ACTION, optionally ``@TEXT`` to apply only to batches whose prompt
contains TEXT:

- ``pause``: write the marker key, then wait while it exists (a test kills the worker, or deletes
  the key to let it go on);
- ``raise``: raise RuntimeError (like a device or driver error);
- ``exit``: end the process at once with code 70 (like a crash).

Every hit writes the marker ``sdq:debug:<worker>:<point>`` first, so a test waits on that key,
never on a sleep.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

from sdq.state.errors import StateError
from sdq.state.faults import FaultRules
from sdq.state.keys import fault_marker_key

log = logging.getLogger(__name__)

POINTS = ("load", "batch", "step", "denoise", "decode", "upload", "claimed", "uploaded", "finished", "ack",
          "handed_off")
"""load: before the model is fetched; batch: before a micro-batch is generated; step: after a
progress write inside a denoising step; denoise: before each run of the denoising network inside the
pipeline call's loop; decode: before the VAE's decoder runs inside the call (after SDXL upcast its
VAE); upload: before an item's PNG is claimed and stored; claimed:
after the run claimed the item (`JobStore.claim_result`), before the PNG is stored; uploaded: after it
is stored, before its state is recorded; finished: after the job's last item was recorded, before
its finalisation is queued; ack: after the chunk's results are recorded, before its message is
acknowledged; handed_off: after an out-of-memory hand-off re-queued a batch, before its message is
published (the outbox publishes it)."""

ENV = "SDQ_DEBUG_FAULTS"


def marker_key(worker: str, point: str) -> str:
    """The Redis key a fault rule writes when hit."""
    return fault_marker_key(worker, point)


class Faults:
    """The fault rules of one worker process (read from Redis at each hit when enabled)."""

    def __init__(self, rules: FaultRules | None, worker: str, enabled: bool = False) -> None:
        self.rules, self.worker, self.enabled = rules, worker, enabled and rules is not None

    @classmethod
    def from_env(cls, rules: FaultRules, worker: str) -> "Faults":
        """Enabled when `SDQ_DEBUG_FAULTS` is 1."""
        return cls(rules, worker, os.environ.get(ENV, "") in ("1", "true", "yes"))

    def hit(self, point: str, prompts: list[str] | None = None) -> None:
        """Apply the rule for `point`, if any."""
        if not self.enabled:
            return
        rule = self.rules.rule(self.worker, point)
        if not rule:
            return
        action, _, only_prompt = rule.partition("@")
        if only_prompt and not any(only_prompt in p for p in prompts or ()):
            return
        self.rules.mark(self.worker, point, os.getpid())
        log.warning("debug fault %s at %s", action, point)
        if action == "exit":
            os._exit(70)
        if action == "raise":
            raise RuntimeError(f"debug fault at {point} ({ENV})")
        while self.rules.marked(self.worker, point):  # a test restarting Redis: it keeps waiting
            time.sleep(0.05)

    def _hit_in_call(self, point: str, prompts: list[str]) -> None:
        """`hit` from inside a pipeline call: Redis unreachable while the rules are read is no fault of the
        item's (a test restarting Redis), so it passes silently; a rule's own `raise` still raises."""
        try:
            self.hit(point, prompts)
        except StateError:
            log.debug("fault rules unreadable at %s", point, exc_info=True)

    @contextmanager
    def inside(self, pipe: Any, prompts: list[str]) -> Iterator[None]:
        """While a pipeline call of `prompts` runs in this block: hit `denoise` before each forward of
        the pipeline's denoising network and `decode` before its VAE decoder's (nothing when disabled)."""
        if not self.enabled:
            yield
            return
        vae = getattr(pipe, "vae", None)
        modules = {"denoise": getattr(pipe, "unet", None) or getattr(pipe, "transformer", None),
                   "decode": getattr(vae, "decoder", None)}
        handles = [module.register_forward_pre_hook(lambda _m, _a, point=point: self._hit_in_call(point, prompts))
                   for point, module in modules.items() if module is not None]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
