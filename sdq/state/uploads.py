"""Uploaded input images' records and the tenants' daily upload bytes, as the producer keeps them.

``sdq:upload:<key>`` (`sdq.state.keys.upload_key`) holds the JSON record of the image stored at S3
`key` (its size, owner, time), for as long as the jobs that may use it; the daily bytes are
`sdq.state.limits.charge_daily_bytes`'s counter.
"""
from __future__ import annotations

import json
from typing import Any

from sdq.state.base import StoreBase
from sdq.state.keys import upload_key
from sdq.state.limits import charge_daily_bytes


class Uploads(StoreBase):
    """The producer's upload records and quota."""

    def record_upload(self, key: str, record: dict[str, Any], ttl: int) -> None:
        """Keep the record of the upload stored at `key` for `ttl` seconds."""
        self.redis.set(upload_key(key), json.dumps(record), ex=ttl)

    def upload(self, key: str) -> dict[str, Any] | None:
        """The record of the upload stored at `key` (None: no such upload, or its record expired)."""
        raw = self.redis.get(upload_key(key))
        return json.loads(raw) if raw else None

    def charge_upload_bytes(self, owner: str, size: int, quota: int, day: str) -> int | None:
        """Count `size` bytes against `owner`'s `day` (YYYYMMDD, UTC): the day's total, or None (nothing
        counted) past `quota` (`sdq.state.limits.charge_daily_bytes`)."""
        return charge_daily_bytes(self.redis, owner, size, quota, day)
