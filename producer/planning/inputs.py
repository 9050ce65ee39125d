"""The uploaded images an item starts from, checked against its pipeline's spec at submit."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from sdq import pipelines
from sdq.exceptions import InvalidInput

Uploads = Callable[[str, str], dict[str, Any]]
"""`uploads(key, field)`: an upload's record `{key, width, height}`, or InvalidInput naming `field`."""


@dataclass
class ItemImages:
    """One item's image uploads: key per request field, and the record whose size the item takes."""

    keys: dict[str, str] = field(default_factory=dict)
    size: dict[str, Any] | None = None

    @property
    def init_image(self) -> str | None:
        """The init image's upload key (the `Item.init_image` field)."""
        return self.keys.get("init_image")

    @property
    def others(self) -> dict[str, str] | None:
        """Keys of the other inputs (`Item.images`), None when there are none."""
        return {k: v for k, v in self.keys.items() if k != "init_image"} or None


def _takers(name: str) -> str:
    return ", ".join(s.name for s in pipelines.SPECS.values() if name in s.image_fields) or "none"


def item_images(spec: pipelines.PipelineSpec, given: dict[str, Any], item: Any | None, where: str,
                uploads: Uploads | None) -> ItemImages:
    """The uploads of one request item (`item`, else the job-wide `given` params) for `spec`: each
    image the pipeline needs is present, no other is given, each names an upload of this caller, and
    sizes that must match do. Errors name the field (`items[2].mask_image`, `params.init_image`)."""
    # 1. Which keys, and the field each one came from.
    out, names = ItemImages(), {}
    for name in pipelines.all_images():
        own = getattr(item, name, None) if item is not None else None
        key = own or given.get(name)
        names[name] = f"{where}{name}" if own else f"params.{name}"
        needed = name in spec.image_fields
        if needed and not key:
            article = "an" if name[0] in "aeiou" else "a"
            raise InvalidInput(f"{where}{name}", f"pipeline {spec.name!r} needs {article} {name}",
                               code=f"missing_{name}")
        if key and not needed:
            raise InvalidInput(names[name], f"pipeline {spec.name!r} takes no {name} ({_takers(name)} do)",
                               code=f"unexpected_{name}")
        if key:
            out.keys[name] = key
    if uploads is None:
        return out
    # 2. Each key is an upload of this caller; sizes that must match do.
    records = {name: uploads(key, names[name]) for name, key in out.keys.items()}
    for image in spec.images:
        other = records.get(image.same_size_as or "")
        mine = records[image.field]
        if other is not None and (mine["width"], mine["height"]) != (other["width"], other["height"]):
            raise InvalidInput(names[image.field], f"{names[image.field]} is {mine['width']}x{mine['height']} but "
                               f"{image.same_size_as} is {other['width']}x{other['height']}: they must be the "
                               f"same size", code="size_mismatch")
        if image.sets_size:
            out.size = mine
    return out
