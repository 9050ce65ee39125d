"""The worker hook of `params.preview` (`sdq.options.preview`): a per-step function that decodes the call's
latents now and then with the worker's tiny preview decoder and publishes each item's JPEG (`workers.running.preview`)."""
from __future__ import annotations

import logging
from typing import Any

from workers.options.base import OptionHook, StepContext, StepFunction
from workers.running.preview import PreviewDecoders, Previews, latent_channels

log = logging.getLogger(__name__)


class PreviewHook(OptionHook):
    """Previews need the worker's decoders and a way to publish events: both given at `setup`."""

    name = "preview"

    def __init__(self) -> None:
        self.decoders: PreviewDecoders | None = None
        self.publish = None

    def setup(self, parts: Any) -> None:
        """The worker's preview decoders and its job store (which publishes on the job's event channel)."""
        self.decoders = parts.previews
        self.publish = parts.jobs.publish_preview

    def stepper(self, ctx: StepContext, value: Any) -> StepFunction | None:
        """A `Previews` for the call, or None when the worker has no decoder for its latents."""
        if self.decoders is None or self.publish is None:
            return None
        try:
            decoder = self.decoders.for_latents(latent_channels(ctx.pipe))
        except Exception:  # noqa: BLE001 - no previews is the worst a bad decoder may do
            log.warning("no preview decoder for this model's latents", exc_info=True)
            return None
        if decoder is None:
            return None
        publish = self.publish
        return Previews(decoder, ctx.pipe, ctx.rows, ctx.steps, ctx.params["width"], ctx.params["height"],
                        lambda index, data: publish(ctx.job, data), self.decoders.pool,
                        interval=float(value.get("interval") or 0))
