"""`params.preview`: live previews of each item's image forming, as `item.preview` events on the job's stream.

While an item runs, its worker decodes the current latents with a tiny autoencoder every so often into a small
JPEG and publishes it (`workers.options.preview`); the event stream forwards it (`GET /v1/jobs/{id}/events`)
and the web page shows it in the item's place. A preview changes nothing in the image: the option is not in
the result-cache key nor in the infotext. `"preview": true` asks with the defaults.
"""
from __future__ import annotations

from typing import Any

from sdq import defaults
from sdq.exceptions import InvalidInput
from sdq.families import FLUX2, FLUX2_KLEIN
from sdq.options.base import FormField, OptionSpec, Submit
from sdq.params import Param

INTERVAL = Param("interval", float, defaults.PREVIEW_INTERVAL_MIN, 60, defaults.PREVIEW_INTERVAL,
                 doc="seconds at least between two previews of an item")
"""`params.preview.interval`."""

NO_PREVIEWS = (FLUX2, FLUX2_KLEIN)
"""Families whose latents no preview decoder reads (Flux.2's: 32 channels, packed in position-id order)."""


class Preview(OptionSpec):
    """Previews: a worker-side step hook that changes no pixel of the result."""

    name = "preview"
    title = "previews"
    doc = ("`params.preview`: `item.preview` events with a small JPEG of each item's image forming "
           "(`true`, or `{\"interval\": seconds}`)")
    fields = (INTERVAL,)
    schema_name = "PreviewIn"
    flag = True
    in_image = False
    pipelines = ("txt2img", "img2img", "inpaint", "edit", "depth2img")
    legend = "Previews"
    toggle = "Show the images forming while they are made"
    form = (FormField("interval", "Seconds between previews", attrs=(("min", "0.25"), ("max", "60"), ("step", "0.25"),
                                                                     ("value", "0.5"), ("inputmode", "decimal"))),)

    def offered(self, pipeline: str, family: str | None) -> bool:
        """The pipelines with a step hook that sees latents, for families whose latents a decoder reads."""
        return pipeline in self.pipelines and family not in NO_PREVIEWS

    def check(self, value: Any, ctx: Submit) -> Any:
        """`true` or an object, with the interval's default filled in (None or `false`: not asked for)."""
        if value is None or value is False:
            return None
        if ctx.family in NO_PREVIEWS:
            raise InvalidInput("params.preview", f"model {ctx.model!r} ({ctx.family} family) has no preview "
                               f"decoder for its latents; leave params.preview out", code="unexpected_preview")
        value = super().check({} if value is True else value, ctx)
        return {"interval": value.get("interval") or INTERVAL.default}
