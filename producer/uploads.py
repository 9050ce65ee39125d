"""Init image uploads: checked, re-encoded as PNG and stored under a key the server makes.

`POST /v1/uploads` takes a PNG, JPEG or WebP image (multipart field `file`, or the raw body). It is
refused (4xx) when it is larger than `MAX_UPLOAD_BYTES`, is not one of those formats, or its
header declares more than `MAX_UPLOAD_PIXELS` pixels — checked before a single pixel is decoded,
so a small file that would decompress into gigabytes (a "decompression bomb") costs nothing. The
image is stored as `uploads/<uuid>.png`, and a record `{key, width, height, owner}` is kept in
Redis so the producer can check a job's `init_image` (and read its size) without touching S3.

Hostile tenants: decoding and re-encoding run on native threads (`producer.offload`), never on the
gevent loop that serves every other request of the process; a tenant has at most
`SDQ_MAX_UPLOAD_DECODES` uploads being decoded at once over all producers (`sdq.state.limits`; more:
429 with `Retry-After`), and may send at most `SDQ_UPLOAD_QUOTA_BYTES` upload bytes per UTC day
(counted on arrival, before decoding, refused uploads included; more: 429 until midnight UTC).
"""
from __future__ import annotations

import io
import time
import uuid
import warnings
from datetime import datetime, timezone
from typing import Any

from flask import Request

from producer import offload
from sdq import defaults
from sdq.exceptions import InvalidInput, TooManyRequests
from sdq.state.limits import TenantSlots
from sdq.state.store import JobStore
from storage import ResultStore

MAX_UPLOAD_BYTES = 16 * 1024 * 1024
"""Largest upload accepted, in bytes."""

MAX_UPLOAD_PIXELS = 4096 * 4096
"""Most pixels an uploaded image may declare (width * height)."""

FORMATS = ("PNG", "JPEG", "WEBP")
"""Image formats accepted (Pillow's names); no other decoder is ever tried."""

UPLOAD_PREFIX = "uploads/"
RECORD_TTL = defaults.JOB_TTL
"""Seconds an upload's record lives: as long as the jobs that may use it."""


def read_upload_body(request: Request) -> bytes:
    """The uploaded bytes: multipart field `file`, or the raw body; refuses oversized bodies unread."""
    if request.content_length is not None and request.content_length > MAX_UPLOAD_BYTES + 64 * 1024:
        raise InvalidInput("file", f"upload of {request.content_length} bytes exceeds the limit of "
                           f"{MAX_UPLOAD_BYTES} bytes", code="too_large", status=413)
    if request.mimetype == "multipart/form-data":
        part = request.files.get("file")
        if part is None:
            raise InvalidInput("file", "multipart upload without a `file` field", code="missing_file", status=400)
        data = part.stream.read(MAX_UPLOAD_BYTES + 1)
    else:
        data = request.stream.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidInput("file", f"upload exceeds the limit of {MAX_UPLOAD_BYTES} bytes", code="too_large",
                           status=413)
    if not data:
        raise InvalidInput("file", "the upload is empty", code="invalid_image", status=400)
    return data


def decode_image(data: bytes):
    """Open, check and fully decode an uploaded image; returns an RGB PIL image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    # 1. Header only: format and declared size, before any pixel data is decoded.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput("file", f"image declares too many pixels ({exc})", code="too_large", status=413) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput("file", f"the upload is not a PNG, JPEG or WebP image ({type(exc).__name__})",
                           code="invalid_image", status=415) from None
    width, height = img.size
    if width * height > MAX_UPLOAD_PIXELS or width < 1 or height < 1:
        raise InvalidInput("file", f"image of {width}x{height} ({width * height} pixels) exceeds the limit of "
                           f"{MAX_UPLOAD_PIXELS} pixels", code="too_large", status=413)
    # 2. Pixels: decode the first frame, apply the EXIF orientation, drop alpha.
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput("file", f"the {img.format} image is truncated or corrupt ({exc})",
                           code="invalid_image", status=422) from None


def charge_quota(jobs: JobStore, owner: str, size: int, quota: int) -> None:
    """Count `size` upload bytes against `owner`'s UTC day; TooManyRequests (until midnight) beyond `quota`."""
    now = datetime.now(timezone.utc)
    if jobs.charge_upload_bytes(owner, size, quota, now.strftime("%Y%m%d")) is None:
        midnight = 86400 - (now.hour * 3600 + now.minute * 60 + now.second)
        raise TooManyRequests("file", f"an upload of {size} bytes would pass today's quota of {quota} upload "
                              "bytes per tenant (UTC day)", midnight)


def to_png(data: bytes) -> tuple[bytes, int, int]:
    """Check and decode `data`, re-encode it as PNG; returns (png bytes, width, height). CPU-heavy."""
    img = decode_image(data)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=4)
    return buf.getvalue(), img.size[0], img.size[1]


def save_upload(store: ResultStore, jobs: JobStore, data: bytes, owner: str, decodes: TenantSlots,
                quota: int = defaults.UPLOAD_QUOTA_BYTES) -> dict[str, Any]:
    """Check `data`, store it as `uploads/<uuid>.png` and record it; returns `{key, width, height}`."""
    # 1. The tenant's daily bytes, then one of its decode slots (429 when either is used up).
    charge_quota(jobs, owner, len(data), quota)
    with decodes.slot(owner):
        # 2. Decode and encode on a native thread: the process's other requests keep being served.
        png, width, height = offload.run(to_png, data)
    # 3. Store, then record.
    key = f"{UPLOAD_PREFIX}{uuid.uuid4().hex}.png"
    store.put(key, png, content_type="image/png", metadata={"width": str(width), "height": str(height)})
    record = {"key": key, "width": width, "height": height, "bytes": len(png), "owner": owner,
              "created_at": time.time()}
    jobs.record_upload(key, record, RECORD_TTL)
    return {"key": key, "width": width, "height": height}


def upload_record(jobs: JobStore, key: Any, owner: str, field: str) -> dict[str, Any]:
    """The upload record of `key` for `owner`; InvalidInput naming `field` when it is not one."""
    if not isinstance(key, str) or not key.startswith(UPLOAD_PREFIX) or "/" in key[len(UPLOAD_PREFIX):]:
        raise InvalidInput(field, f"{field} must be a key returned by POST /v1/uploads (uploads/...), got {key!r}",
                           code="invalid_init_image")
    record = jobs.upload(key)
    if record is None or record.get("owner", "") != owner:
        raise InvalidInput(field, f"{field}: no upload {key!r} (upload the image first with POST /v1/uploads)",
                           code="unknown_init_image")
    return record
