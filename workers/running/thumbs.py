"""Small WebP thumbnails of result images, stored next to them so a large job's gallery loads fast."""
from __future__ import annotations

import io
import logging
from typing import Any

log = logging.getLogger(__name__)

THUMB_SIDE = 256
"""Longest side of a thumbnail, pixels (a smaller image is kept at its size)."""

THUMB_QUALITY = 80
"""WebP quality of thumbnails."""


def thumb_key(job_id: str, index: int) -> str:
    """S3 key of an item's thumbnail."""
    return f"jobs/{job_id}/thumbs/{index:05d}.webp"


def encode_thumb(image, side: int = THUMB_SIDE) -> bytes:
    """WebP bytes of `image` scaled to fit in `side` x `side`, aspect ratio kept."""
    thumb = image.convert("RGB")
    thumb.thumbnail((side, side))
    buf = io.BytesIO()
    thumb.save(buf, format="WEBP", quality=THUMB_QUALITY, method=4)
    return buf.getvalue()


def store_thumb(store, job_id: str, index: int, image) -> dict[str, Any]:
    """Make and upload an item's thumbnail; `{"thumb_key": key}`, or {} when the image already fits in
    a thumbnail (it is its own: no second encode and upload per item) or that failed (never raises)."""
    key = thumb_key(job_id, index)
    try:
        if max(image.size) <= THUMB_SIDE:
            return {}
        store.put(key, encode_thumb(image), content_type="image/webp")
    except Exception:  # noqa: BLE001 - a missing thumbnail must never fail the item
        log.exception("thumbnail %s failed", key)
        return {}
    return {"thumb_key": key}
