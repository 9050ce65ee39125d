"""The images of an OpenAI edit request: OpenAI's mask convention turned into sdq's, stored as uploads.

OpenAI repaints the pixels a mask leaves fully transparent (alpha 0); sdq's `inpaint` repaints the white
part of a single-channel mask. So the mask's alpha channel becomes an sdq mask (alpha 0 -> white, the
rest black). A mask without an alpha channel is refused (400 naming `mask`), as OpenAI does. Without a
mask, an image that has fully transparent pixels is its own mask (OpenAI's rule for image edits); an
opaque image is changed as a whole (img2img, or `edit` where the model's family has it). Each image is
then stored like `POST /v1/uploads` stores one (same checks, decode slots and daily quota).
"""
from __future__ import annotations

import io
from typing import Any

from werkzeug.datastructures import FileStorage

from producer import offload
from producer.uploads import FORMATS, MAX_UPLOAD_BYTES, decode_image, save_upload
from sdq.exceptions import InvalidInput
from sdq.state.limits import TenantSlots
from sdq.state.store import JobStore
from storage import ResultStore


def read_file(part: FileStorage, param: str) -> bytes:
    """A multipart file's bytes, bounded; 400/413 naming `param`."""
    data = part.stream.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidInput(param, f"'{param}' exceeds the limit of {MAX_UPLOAD_BYTES} bytes", code="too_large",
                           status=413)
    if not data:
        raise InvalidInput(param, f"'{param}' is empty", code="invalid_image", status=400)
    return data


def _renamed(exc: InvalidInput, param: str) -> InvalidInput:
    return InvalidInput(param, exc.message.replace("the upload", f"'{param}'").replace("upload ", f"'{param}' "),
                        code=exc.code, status=exc.status)


def transparent_mask(data: bytes, param: str, required: bool) -> bytes | None:
    """An sdq mask (PNG, white = repaint) from the alpha channel of `data`: None when the image has no alpha
    channel or no fully transparent pixel (InvalidInput naming `param` when `required` and it has no alpha).
    CPU-heavy: run it off the gevent loop."""
    from PIL import Image, ImageOps

    try:
        decode_image(data)  # the upload checks: format, declared size, truncation
    except InvalidInput as exc:
        raise _renamed(exc, param) from None
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data), formats=FORMATS))
    if "A" not in img.getbands() and "transparency" not in img.info:
        if required:
            raise InvalidInput(param, f"'{param}' must be a PNG or WebP with an alpha channel: its fully transparent "
                               "pixels are the part to repaint", code="invalid_image_format", status=400)
        return None
    alpha = img.convert("RGBA").getchannel("A")
    if not required and alpha.getextrema()[0] > 0:
        return None
    mask = alpha.point(lambda a: 255 if a == 0 else 0).convert("L")
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


def store_images(image: bytes, mask: bytes | None, store: ResultStore, jobs: JobStore, owner: str,
                 decodes: TenantSlots, quota: int) -> dict[str, Any]:
    """Store the init image (and the sdq mask made from `mask`, or from the image's own transparency);
    returns the upload keys by sdq request field (`init_image`, `mask_image`)."""
    sdq_mask = offload.run(transparent_mask, mask if mask is not None else image, "mask" if mask is not None else
                           "image", mask is not None)
    out: dict[str, Any] = {}
    for field, param, data in (("init_image", "image", image), ("mask_image", "mask", sdq_mask)):
        if data is None:
            continue
        try:
            out[field] = save_upload(store, jobs, data, owner, decodes, quota)["key"]
        except InvalidInput as exc:
            raise _renamed(exc, param) from None
    return out
