"""Live previews: an item's current latents decoded by a tiny autoencoder into a small JPEG, every so often.

The decode is small and runs on the device thread inside the step hook (the latents live there); the JPEG
encoding and the publishing go to one background thread, and a preview that finds that thread busy is dropped,
so previews never wait on each other nor hold the denoising loop. Bounded per item: at most one every
`params.preview.interval` seconds (at least `defaults.PREVIEW_INTERVAL_MIN`), at most
`defaults.PREVIEW_MAX_PER_ITEM` in all, each at most
`defaults.PREVIEW_SIDE` pixels on its longer side and `defaults.PREVIEW_MAX_BYTES` bytes.

Decoders are `AutoencoderTiny` models by latent shape: the built-ins `builtin:tiny-taesd` (4 channels: SD 1/2,
SDXL) and `builtin:tiny-taesd3` (16 channels: SD 3, Flux) are generated locally with random weights (their
previews are noise, made the real way); an operator with a real TAESD/TAESDXL/TAESD3/TAEF1 names it by path or
hub id with `--preview-decoder CHANNELS=ID`.
"""
from __future__ import annotations

import base64
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch

from sdq import defaults

log = logging.getLogger(__name__)

BUILTIN_DECODERS = {4: "builtin:tiny-taesd", 16: "builtin:tiny-taesd3"}
"""Latent channels -> the built-in preview decoder for them."""

Publish = Callable[[int, dict[str, Any]], None]
"""Publishes one preview of item `index` (the event's data)."""


def build_tiny_decoder(path: Path, latent_channels: int) -> None:
    """Write a small random `AutoencoderTiny` for `latent_channels`-channel latents to `path` (fixed seed)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(7)
    AutoencoderTiny(latent_channels=latent_channels, encoder_block_out_channels=(16, 16, 16, 16),
                    decoder_block_out_channels=(16, 16, 16, 16)).eval().save_pretrained(path)


BUILDERS = {"tiny-taesd": lambda path: build_tiny_decoder(path, 4),
            "tiny-taesd3": lambda path: build_tiny_decoder(path, 16)}
"""Built-in preview decoders (after `builtin:`) to their generators."""


def latent_grid(pipe: Any, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The latents as (batch, channels, h, w), no larger than a preview needs (a tiny autoencoder makes 8 pixels
    of each latent: at most PREVIEW_SIDE / 8 latents on the longer side are decoded); Flux-style pipelines keep
    them packed in 2x2 patches."""
    if latents.ndim == 3 and hasattr(pipe, "_unpack_latents"):
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    if latents.ndim == 5:  # (batch, channels, frames, h, w) of a video VAE (Qwen-Image's): its one frame
        latents = latents[:, :, 0]
    side = max(latents.shape[-2:])
    most = max(1, defaults.PREVIEW_SIDE // 8)
    if side > most:
        size = [max(1, round(n * most / side)) for n in latents.shape[-2:]]
        latents = torch.nn.functional.interpolate(latents.float(), size=size, mode="area").to(latents.dtype)
    return latents


def to_jpeg(pixels: torch.Tensor) -> bytes:
    """One decoded image (channels, h, w in -1..1) as a JPEG of at most PREVIEW_SIDE px and PREVIEW_MAX_BYTES."""
    from PIL import Image

    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    img = Image.fromarray(arr)
    img.thumbnail((defaults.PREVIEW_SIDE, defaults.PREVIEW_SIDE))
    for quality in (70, 50, 30):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        if buf.tell() <= defaults.PREVIEW_MAX_BYTES:
            return buf.getvalue()
        img = img.resize((max(1, img.width // 2), max(1, img.height // 2)))
    return buf.getvalue()


class Previews:
    """The step hook's preview part for one pipeline call: decode now and then, encode and publish aside."""

    def __init__(self, decoder: Any, pipe: Any, indices: list[int], steps: int, width: int, height: int,
                 publish: Publish, pool: ThreadPoolExecutor, interval: float = 0.0) -> None:
        self.decoder, self.pipe, self.indices, self.steps = decoder, pipe, indices, steps
        self.width, self.height, self.publish, self.pool = width, height, publish, pool
        self.interval = max(interval, defaults.PREVIEW_INTERVAL_MIN)
        self.sent = 0
        self._last = float("-inf")
        self._busy = threading.Event()

    def __call__(self, step: int, kwargs: dict[str, Any]) -> None:
        """After denoising step `step` (0-based): maybe decode `kwargs["latents"]` and hand it to the pool."""
        now = time.monotonic()
        latents = kwargs.get("latents")
        if (latents is None or self.sent >= defaults.PREVIEW_MAX_PER_ITEM or self._busy.is_set()
                or now - self._last < self.interval or step + 1 >= self.steps):
            return
        self._last = now
        self.sent += 1
        try:
            with torch.no_grad():
                grid = latent_grid(self.pipe, latents, self.width, self.height)
                pixels = self.decoder.decode(grid.to(self.decoder.device, self.decoder.dtype)).sample
        except Exception:  # noqa: BLE001 - a preview is a courtesy: the item goes on without it
            log.warning("preview decode failed; no more previews for this call", exc_info=True)
            self.sent = defaults.PREVIEW_MAX_PER_ITEM
            return
        self._busy.set()
        self.pool.submit(self._send, pixels.detach().cpu(), step + 1)

    def _send(self, pixels: torch.Tensor, step: int) -> None:
        try:
            for row, index in enumerate(self.indices[:pixels.shape[0]]):
                url = "data:image/jpeg;base64," + base64.b64encode(to_jpeg(pixels[row])).decode("ascii")
                self.publish(index, {"index": index, "step": step, "steps": self.steps, "image": url})
        except Exception:  # noqa: BLE001 - a lost preview is only a lost preview
            log.warning("preview not published", exc_info=True)
        finally:
            self._busy.clear()


class PreviewDecoders:
    """The worker's preview decoders, loaded once per latent shape and kept (each a few MB)."""

    def __init__(self, load: Callable[[str], Any], chosen: dict[int, str] | None = None) -> None:
        self.load, self.chosen = load, {**BUILTIN_DECODERS, **(chosen or {})}
        self._loaded: dict[int, Any] = {}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="sdq-preview")

    def for_latents(self, channels: int) -> Any | None:
        """The decoder of `channels`-channel latents (None: no decoder for that shape)."""
        if channels not in self._loaded:
            model = self.chosen.get(channels)
            self._loaded[channels] = self.load(model) if model else None
        return self._loaded[channels]


def decoder_loader(fetcher: Any, device: str, dtype: torch.dtype) -> Callable[[str], Any]:
    """Loads a preview decoder by model id (a built-in, a local folder, a pushed or hub model) onto the
    worker's device, in its dtype."""
    def load(model: str) -> Any:
        from diffusers import AutoencoderTiny

        from sdq.sources import source_for

        return AutoencoderTiny.from_pretrained(source_for(model).open(fetcher), dtype=dtype).to(device).eval()
    return load


def latent_channels(pipe: Any) -> int:
    """Channels of the latents the pipeline's VAE decodes (Flux packs them, but its VAE says the real count;
    Qwen-Image's VAE calls it `z_dim`)."""
    config = getattr(getattr(pipe, "vae", None), "config", {})
    return int(config.get("latent_channels") or config.get("z_dim") or 4)
