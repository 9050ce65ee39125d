"""Every sdq error, in one flat module under `SdqError`."""
from __future__ import annotations

from typing import Any


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


class PromptFileError(SdqError):
    """A prompt file that cannot be read; the message names the file and line."""


class NotFound(SdqError):
    """A job, item or object that does not exist (or belongs to someone else)."""


class TooManyRequests(SdqError):
    """A per-tenant limit is reached for now (e.g. queued items); the caller may retry later."""

    def __init__(self, field: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.field = field
        self.retry_after = retry_after


class AlreadySubmitted(SdqError):
    """A request made under an idempotency key that already made job `job_id` (`sdq.state.idempotency`)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"already submitted as job {job_id}")
        self.job_id = job_id


class ApiError(SdqError):
    """An error answer from the producer, seen by the client: `HTTP <status> [<field>]: <message>`."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        err = body.get("error") if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {"message": str(body)}
        field = f" [{err.get('field')}]" if err.get("field") else ""
        super().__init__(f"HTTP {status}{field}: {err.get('message')}")
        self.status, self.body = status, body


class UnresolvedHost(SdqError):
    """A webhook host that does not resolve now (worth retrying at delivery)."""


class WebhookFailed(SdqError):
    """A webhook attempt that failed in a way worth retrying (DNS, connection, 5xx, 408, 429)."""


class ModelError(SdqError):
    """A model cannot be resolved or loaded."""


class ModelUnavailable(SdqError):
    """A model's weights cannot be fetched now (S3 unreachable beyond its outage limit): an
    infrastructure error, so the items go back to the queue; deliberately not a `ModelError`, which
    fails them."""


class CapabilityError(SdqError):
    """A worker was asked for a device/dtype combination it cannot run."""


class Cancelled(SdqError):
    """Raised from a pipeline's step callback once its job is cancelled: stops the denoising loop at once."""


class OutOfMemory(SdqError, MemoryError):
    """Out of device memory even after every fallback; `fields` says what was tried."""

    def __init__(self, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or {}


class WorkLost(SdqError):
    """A chunk's run stopped on an infrastructure error (Redis, S3, device): its items were given
    back and its message must be delivered again, not acknowledged."""


class BadMessage(SdqError):
    """A task body that is not an sdq chunk: dropped with an error, never delivered again (it would
    fail the same way every time)."""
