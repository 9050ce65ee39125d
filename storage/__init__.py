"""storage: the S3-compatible result store (boto3)."""
from __future__ import annotations

from storage.s3 import ResultStore

__all__ = ["ResultStore"]
