"""Results in an S3-compatible bucket: path-style, retried uploads (direct where the endpoint allows:
`storage.direct`), presigned GET URLs.

botocore's exceptions stay in this module: every call raises `storage.errors` types instead.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import urllib3
from botocore.config import Config
from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError as BotoConnectionError,
                                 HTTPClientError, IncompleteReadError)

from sdq.config import Settings
from storage import direct
from storage.errors import ObjectMissing, StorageError, StorageUnavailable

log = logging.getLogger(__name__)

URL_CACHE_SIZE = 100_000
"""Presigned URLs kept per process before the cache is dropped and refilled."""

UPLOAD_ATTEMPTS = 5
"""Total attempts per S3 call (botocore's standard retry mode backs off between them)."""

RETRY_CODES = ("500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
               "RequestTimeTooSkewed", "Throttling", "ThrottlingException")
"""S3 error codes worth retrying during an outage; any other error answer is final."""

STREAM_CHUNK_BYTES = 256 * 1024
"""Bytes per piece when an object is streamed rather than read whole."""

FIRST_BACKOFF = 0.5
"""Seconds before sdq's second attempt at an S3 call; doubled each time up to the cap."""


def transient(exc: BaseException) -> bool:
    """Whether an S3 call's error may go away by itself (server down, restarting, overloaded, a body
    cut short): botocore's error, or the store's `StorageUnavailable`."""
    if isinstance(exc, StorageUnavailable):
        return True
    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError, urllib3.exceptions.HTTPError)):
        return True
    if isinstance(exc, direct.Refused):
        return exc.code in RETRY_CODES or exc.status >= 500
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return err.get("Code") in RETRY_CODES or status.startswith("5")
    return False


def missing(exc: BaseException) -> bool:
    """Whether an S3 call failed because the object (or its copy source) does not exist."""
    if isinstance(exc, ObjectMissing):
        return True
    if not isinstance(exc, ClientError):
        return False
    err = exc.response.get("Error", {})
    status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return err.get("Code") in ("404", "NoSuchKey", "NotFound") or status == "404"


def translate(exc: BaseException) -> BaseException:
    """The store's own error for a failed S3 call (`exc` itself when it is not an S3 client error)."""
    if isinstance(exc, StorageError):
        return exc
    message = f"{type(exc).__name__}: {exc}"
    if missing(exc):
        return ObjectMissing(message)
    if transient(exc):
        return StorageUnavailable(message)
    if isinstance(exc, BotoCoreError | ClientError | direct.Refused | urllib3.exceptions.HTTPError):
        return StorageError(message)
    return exc


@contextmanager
def _translated() -> Iterator[None]:
    """Run the body with botocore's errors turned into the store's own (chained for the log)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised, translated where it is an S3 error
        out = translate(exc)
        if out is exc:
            raise
        raise out from exc


def _pieces(body: Any, chunk: int) -> Iterator[bytes]:
    """A streamed body's pieces, its read errors translated like every other call's."""
    with _translated():
        yield from body.iter_chunks(chunk)


def _no_bucket(exc: BaseException) -> bool:
    """Whether a PUT failed because its bucket does not exist."""
    if isinstance(exc, direct.Refused):
        return exc.code == "NoSuchBucket"
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "NoSuchBucket"


def _client(endpoint_url: str | None, region: str, session: boto3.session.Session | None = None):
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "total_max_attempts": UPLOAD_ATTEMPTS},
        connect_timeout=5, read_timeout=30,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=16,
    )
    return (session or boto3.session.Session()).client("s3", endpoint_url=endpoint_url, region_name=region,
                                                        config=config)


class ResultStore:
    """One bucket of results. Keys are made by the server (`sdq.contract`), never from user text."""

    def __init__(self, bucket: str, endpoint_url: str | None = None,
                 public_endpoint_url: str | None = None, region: str = "us-east-1",
                 url_ttl: int = 3600, outage_limit: float = 0.0, backoff_cap: float = 15.0,
                 on_retry: Callable[[], None] | None = None) -> None:
        self.bucket = bucket
        self.url_ttl = url_ttl
        # sdq's own retry loop around botocore's (whose attempts are over in about a second):
        # `outage_limit` seconds of transient errors are ridden out (0: none, e.g. in an HTTP request)
        self.outage_limit, self.backoff_cap, self.on_retry = outage_limit, backoff_cap, on_retry
        session = boto3.session.Session()
        self.client = _client(endpoint_url, region, session)
        public = public_endpoint_url or endpoint_url
        self.signer = self.client if public == endpoint_url else _client(public, region)
        # PUTs signed here and sent on a pooled connection (`storage.direct`), where the endpoint allows it and
        # the store rides out outages itself (a store without an outage limit keeps botocore's quick retries)
        credentials = session.get_credentials() if outage_limit > 0 and direct.usable(endpoint_url) else None
        self.direct = direct.DirectPut(endpoint_url, region, credentials) if credentials is not None else None
        self._urls: dict[str, tuple[float, str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> "ResultStore":
        """Build from `sdq.config.Settings` (`options`: outage_limit, backoff_cap, on_retry)."""
        return cls(settings.s3_bucket, settings.s3_endpoint_url, settings.s3_public_endpoint_url,
                   settings.s3_region, settings.url_ttl, **options)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """`fn()`, retried with exponential backoff while it fails transiently, for at most
        `outage_limit` seconds; the caller keeps its data (an encoded PNG is never made again)."""
        deadline = time.monotonic() + self.outage_limit
        pause = FIRST_BACKOFF
        while True:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified just below
                if not transient(exc) or time.monotonic() + pause > deadline:
                    out = translate(exc)
                    if out is exc:
                        raise
                    raise out from exc
                log.warning("S3 %s failed (%s); retrying in %.1fs", what, exc, pause)
            if self.on_retry is not None:
                self.on_retry()
            time.sleep(pause)
            if self.on_retry is not None:
                self.on_retry()
            pause = min(self.backoff_cap, pause * 2)

    def retried(self, what: str, fn: Callable[[], Any]) -> Any:
        """`fn()` (S3 calls on this store) under the store's outage policy, like its own calls."""
        return self._call(what, fn)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""
        with _translated():
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError:
                try:
                    self.client.create_bucket(Bucket=self.bucket)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",
                                                                         "BucketAlreadyExists"):
                        raise

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None, before_attempt: Callable[[], None] | None = None) -> None:
        """Write `data` at `key` (overwrites, so a re-run item never duplicates results).

        Creates the bucket on first use when it does not exist yet. `before_attempt()` runs before each
        attempt (the first and every retry through an outage); what it raises ends the put unretried.
        """
        args = dict(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, Metadata=metadata or {})

        def once() -> None:
            if self.direct is not None:
                self.direct.put(self.bucket, key, data, content_type, metadata or {})
            else:
                self.client.put_object(**args)

        def put() -> None:
            if before_attempt is not None:
                before_attempt()
            try:
                once()
            except (ClientError, direct.Refused) as exc:
                if not _no_bucket(exc):
                    raise
                self.ensure_bucket()
                once()

        self._call(f"PUT {key}", put)

    def put_file(self, key: str, path: str | Path) -> None:
        """Upload the file at `path` to `key`, read from disk piece by piece (multipart when large)."""
        with _translated():
            self.client.upload_file(str(path), self.bucket, key)

    def get(self, key: str) -> bytes:
        """Read the object at `key` (retried through an outage like `put`)."""
        return self._call(f"GET {key}", lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def stream(self, key: str, chunk: int = STREAM_CHUNK_BYTES, start: int = 0) -> tuple[int, Iterator[bytes]]:
        """The object at `key` from byte `start` on, as (its size in bytes from `start`, an iterator of
        pieces of at most `chunk` bytes); memory stays bounded whatever the object's size. A missing
        key raises `ObjectMissing` (one attempt: nothing is retried)."""
        extra = {"Range": f"bytes={start}-"} if start else {}
        with _translated():
            obj = self.client.get_object(Bucket=self.bucket, Key=key, **extra)
        return int(obj.get("ContentLength") or 0), _pieces(obj["Body"], chunk)

    def copy(self, source: str, key: str) -> None:
        """Server-side copy of the object at `source` to `key` (bytes, content type and metadata
        kept; nothing passes through this process). A missing `source` raises `ObjectMissing`;
        transient errors are retried like `put`."""
        self._call(f"COPY {source} -> {key}", lambda: self.client.copy_object(
            Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source}))

    def size(self, key: str) -> int | None:
        """Size of the object at `key`, or None when absent."""
        try:
            with _translated():
                return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ObjectMissing:
            return None

    def keys(self, prefix: str) -> list[str]:
        """All keys under `prefix`, sorted."""
        out: list[str] = []
        with _translated():
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                out.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(out)

    def url(self, key: str) -> str:
        """A presigned GET URL for `key`, signed for the public endpoint.

        Signing costs ~0.5 ms, so URLs are cached and re-signed once half their lifetime has
        passed: a URL handed out is always valid for at least `url_ttl / 2` seconds.
        """
        now = time.monotonic()
        hit = self._urls.get(key)
        if hit is not None and now - hit[0] < self.url_ttl / 2:
            return hit[1]
        with _translated():
            url = self.signer.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.url_ttl)
        if len(self._urls) >= URL_CACHE_SIZE:
            self._urls.clear()
        self._urls[key] = (now, url)
        return url
