"""The API's error responses, built in one place: ``{"error": {"code", "message", "field"}}``.

Bad input is a 4xx naming the field; a service the request needs being down is a 503 with
`Retry-After`; anything else is a bug, answered 500 in the same shape (and logged).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from flask import Flask, Response, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from sdq import defaults
from sdq.exceptions import InvalidInput, NotFound, TooManyRequests
from sdq.state.errors import UNREACHABLE
from storage import StorageError

log = logging.getLogger(__name__)


Dialect = Callable[[int, str, str, "str | None"], "tuple[dict[str, Any], int]"]
"""`(status, code, message, field) -> (body, status)`: another API's error shape (a door's)."""

DIALECTS: dict[str, Dialect] = {}
"""URL prefix -> the error shape of the door served under it (`register_dialect`); sdq's own elsewhere."""


def register_dialect(prefix: str, shape: Dialect) -> None:
    """Answer every error of a request under `prefix` (auth, bad input, unknown route) in `shape`."""
    DIALECTS[prefix] = shape


def _dialect() -> Dialect | None:
    if not DIALECTS or not has_request_context():
        return None
    return next((shape for prefix, shape in DIALECTS.items() if request.path.startswith(prefix)), None)


def error_response(status: int, code: str, message: str, field: str | None = None,
                   retry_after: int | None = None) -> tuple[Response, int]:
    """The JSON error body and its status (with `Retry-After` when given), in the door's shape under a door."""
    shape = _dialect()
    if shape is not None:
        body, status = shape(status, code, message, field)
        resp = jsonify(body)
    else:
        resp = jsonify({"error": {"code": code, "message": message, "field": field}})
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp, status


def _service_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning Redis, the broker or S3 cannot be reached now."""
    from kombu.exceptions import OperationalError

    return (*UNREACHABLE, OperationalError, StorageError)


def register(app: Flask) -> None:
    """Install the error handlers on `app`."""

    @app.errorhandler(InvalidInput)
    def invalid(exc: InvalidInput):
        return error_response(exc.status, exc.code, exc.message, exc.field)

    @app.errorhandler(NotFound)
    def not_found(exc: NotFound):
        return error_response(404, "not_found", str(exc))

    @app.errorhandler(TooManyRequests)
    def too_many(exc: TooManyRequests):
        return error_response(429, "too_many_requests", str(exc), exc.field, exc.retry_after)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        return error_response(413, "too_large", "the request body exceeds this endpoint's limit", "body")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name)

    for cls in _service_errors():
        app.register_error_handler(cls, _service_down)

    @app.errorhandler(Exception)
    def bug(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); this is a bug")


def _service_down(exc: Exception):
    """503 without echoing addresses or credentials from the exception's text."""
    log.warning("service unavailable: %s", exc)
    return error_response(503, "unavailable", f"a backing service is unavailable ({type(exc).__name__}); retry later",
                          None, defaults.UNAVAILABLE_RETRY_AFTER)
