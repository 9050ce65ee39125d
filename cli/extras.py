"""`sdq submit` flags beyond the common parameters: the inpaint mask (`params.mask_image`) and every
request option's own flags (`sdq.options`); images are uploaded first and named by their keys."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from sdq import options
from cli.client import Client
from sdq.exceptions import InvalidInput


def add_arguments(s: argparse.ArgumentParser) -> None:
    """The flags, on the `submit` parser."""
    s.add_argument("--mask-image", dest="mask_image", help="inpaint: the mask (white is repainted)")
    for option in options.OPTIONS.values():
        option.add_arguments(s)


def uploader(client: Client | None) -> Callable[[str, str], str]:
    """`upload(flag, path)`: the file's upload key, or InvalidInput naming the flag."""

    def upload(flag: str, name: str) -> str:
        path = Path(name)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidInput(flag, f"{flag} {str(path)!r} cannot be read: {exc.strerror}") from None
        if client is None:
            raise InvalidInput(flag, f"{flag} needs a server to upload to")
        return client.upload(data, path.name)["key"]

    return upload


def option_params(args: argparse.Namespace, client: Client | None) -> dict[str, Any]:
    """The request options the flags ask for (uploading their images)."""
    upload = uploader(client)
    return {name: value for name, option in options.OPTIONS.items()
            if (value := option.from_args(args, upload)) is not None}


def apply_mask(args: argparse.Namespace, params: dict[str, Any], client: Client) -> None:
    """Add the mask the flag names to `params` (uploading it)."""
    if getattr(args, "mask_image", None):
        params["mask_image"] = uploader(client)("--mask-image", args.mask_image)
