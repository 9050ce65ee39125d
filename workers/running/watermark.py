"""The invisible watermark: embedded in result images on request, detected by `sdq inspect`.

Uses the `invisible-watermark` library (the one the original Stable Diffusion scripts use) with its
`dwtDct` method: a 32-bit payload hidden in the DCT of the image's wavelet bands, invisible to the
eye, surviving PNG storage. The library needs images of at least 256x256 pixels. It is imported
lazily, so this module stays importable (and torch-free) where the library is not installed.
"""
from __future__ import annotations

from typing import Any

from sdq.contract import WATERMARK_MIN_PIXELS

PAYLOAD = b"sdq1"
"""The bytes embedded in every watermarked image."""

METHOD = "dwtDct"
"""invisible-watermark's embedding method."""

MIN_PIXELS = WATERMARK_MIN_PIXELS
"""Smallest image (width * height) the library can mark or read."""

LABEL = f"invisible-watermark {METHOD} {PAYLOAD.decode()}"
"""How a watermark is named in the infotext."""


def _library():
    try:
        import cv2  # noqa: F401  (the library's own dependency; fails first when libGL is missing)
        from imwatermark import WatermarkDecoder, WatermarkEncoder
    except ImportError as exc:
        raise RuntimeError(f"the invisible watermark needs the invisible-watermark package ({exc}); install the "
                           "worker extra: pip install '.[worker]' (on Debian/Ubuntu opencv also needs "
                           "apt-get install libgl1 libglib2.0-0)") from exc
    return WatermarkEncoder, WatermarkDecoder


def can_mark(image: Any) -> bool:
    """Whether `image` (PIL) is large enough to carry the watermark (a video clip is not marked)."""
    return not hasattr(image, "frames") and image.size[0] * image.size[1] >= MIN_PIXELS


def embed(image: Any) -> Any:
    """`image` (PIL, RGB) with the watermark embedded; unchanged when it is too small to carry one."""
    import numpy as np
    from PIL import Image

    if not can_mark(image):
        return image
    encoder_cls, _ = _library()
    encoder = encoder_cls()
    encoder.set_watermark("bytes", PAYLOAD)
    bgr = np.asarray(image.convert("RGB"))[:, :, ::-1]
    marked = encoder.encode(np.ascontiguousarray(bgr), METHOD)
    return Image.fromarray(np.ascontiguousarray(marked[:, :, ::-1]))


def detect(image: Any) -> bool | None:
    """True when `image` carries the sdq watermark, False when not, None when it is too small to tell."""
    import numpy as np

    if not can_mark(image):
        return None
    _, decoder_cls = _library()
    decoder = decoder_cls("bytes", len(PAYLOAD) * 8)
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    return decoder.decode(bgr, METHOD) == PAYLOAD
