"""All sdq errors derive from SdqError."""
from __future__ import annotations


class SdqError(Exception):
    """Base class of every sdq error."""


class ConfigError(SdqError):
    """A setting is missing or wrong; the message says how to fix it."""


class InvalidInput(SdqError):
    """Caller input that fails validation; carries the offending field."""

    def __init__(self, field: str, message: str, code: str = "invalid", status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.code = code
        self.status = status

    def to_json(self) -> dict:
        """The API error body."""
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class NotFound(SdqError):
    """A job, item or object that does not exist (or belongs to someone else)."""


class ModelError(SdqError):
    """A model cannot be resolved or loaded."""


class CapabilityError(SdqError):
    """A worker was asked for a device/dtype combination it cannot run."""


class Cancelled(SdqError):
    """Raised inside a pipeline call when its job was cancelled."""


class Unavailable(SdqError):
    """A service the request needs (Redis, the broker, S3) cannot be reached; the caller may retry."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyRequests(SdqError):
    """A per-tenant limit is reached for now (e.g. queued items); the caller may retry later."""

    def __init__(self, field: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.field = field
        self.retry_after = retry_after
class WorkLost(SdqError):
    """A chunk's run stopped on an infrastructure error (Redis, S3, device): its items were given
    back and its message must be delivered again, not acknowledged."""
