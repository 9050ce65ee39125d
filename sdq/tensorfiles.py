"""Reading a `.safetensors` file's JSON header: its tensor names and metadata, without loading a tensor."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

HEADER_MAX = 100 * 2**20
"""Largest safetensors JSON header read (the format's own limit)."""


def read_header(path: Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The header of the `.safetensors` file at `path` (tensor name -> dtype, shape, offsets; plus
    `__metadata__`); `error` naming the file when it is not a safetensors file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise error(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (size,) = struct.unpack("<Q", head)
        if not 0 < size <= HEADER_MAX:
            raise error(f"{path}: not a safetensors file (header length {size})")
        try:
            header = json.loads(f.read(size))
        except ValueError as exc:
            raise error(f"{path}: not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise error(f"{path}: not a safetensors file (its header is not a JSON object)")
    return header


def tensor_names(path: Path, error: type[Exception] = ValueError) -> list[str]:
    """Tensor names of the `.safetensors` file at `path`."""
    return [k for k in read_header(path, error) if k != "__metadata__"]
