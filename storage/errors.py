"""The store's own errors: callers above `storage/` never see botocore's exceptions.

Every S3 call of `ResultStore` raises one of these (chained to botocore's error for the log) when it fails.
"""
from __future__ import annotations

from sdq.exceptions import SdqError


class StorageError(SdqError):
    """An S3 call failed for a reason that will not go away by retrying (access denied, a bad request ...)."""


class StorageUnavailable(StorageError):
    """The bucket could not be reached (down, restarting, overloaded) for longer than the store's outage limit."""


class ObjectMissing(StorageError):
    """The object (or the source of a copy) does not exist in the bucket."""
