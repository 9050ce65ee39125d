"""The Lua scripts of the job store, loaded by name from ``lua/<name>.lua`` and registered on a client.

A script whose first line is ``-- include: common`` gets ``lua/common.lua`` (the helpers every item
state change shares) in front of it, with ``ITEM_FINISHED`` filled in from the Item record's EVENT
view. Each file's header says its KEYS and ARGV; every key comes in KEYS (`sdq.state.keys`).
"""
from __future__ import annotations

from functools import cache
from importlib.resources import files

import redis
from redis.commands.core import Script

from sdq.records import EVENT, Item, shown_in

NAMES = ("start", "finish", "cancel_begin", "cancel_slice", "retry_slice", "hand_off", "release",
         "reap", "progress", "backup", "claim", "take_slot", "outbox_take",
         "park", "unpark")
"""Every script of the store (one ``lua/<name>.lua`` each)."""

INCLUDE_COMMON = "-- include: common"

ITEM_FINISHED = "{" + ", ".join(f"{name} = it.{name}" for name in shown_in(Item, EVENT)) + "}"
"""The Lua table of an `item.finished` event: the item's fields that `EVENT` shows."""


def _read(name: str) -> str:
    return files("sdq.state").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@cache
def source(name: str) -> str:
    """The full Lua source of script `name` (with the common helpers if it includes them)."""
    if name not in NAMES:
        raise ValueError(f"no store script {name!r}; known: {', '.join(NAMES)}")
    text = _read(name)
    if text.startswith(INCLUDE_COMMON):
        text = _read("common") + "\n" + text
    return text.replace("ITEM_FINISHED", ITEM_FINISHED)


def register(client: redis.Redis) -> dict[str, Script]:
    """Every store script registered on `client`, by name (loaded into Redis on first call)."""
    return {name: client.register_script(source(name)) for name in NAMES}

