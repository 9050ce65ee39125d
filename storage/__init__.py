"""storage: the S3-compatible result store (boto3) and its own error types (botocore never leaves it)."""
from __future__ import annotations

from storage.errors import ObjectMissing, StorageError, StorageUnavailable
from storage.s3 import ResultStore

__all__ = ["ObjectMissing", "ResultStore", "StorageError", "StorageUnavailable"]
