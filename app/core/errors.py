"""Domain errors. Each carries its HTTP status; the API maps them to `{"detail": ...}`."""

from __future__ import annotations

from typing import ClassVar


class AppError(Exception):
    """Base class of the service's errors."""

    status_code: ClassVar[int] = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(AppError):
    """A resource named by the request does not exist."""

    status_code = 404


class Conflict(AppError):
    """The resource is in a state that forbids the request."""

    status_code = 409


class Unprocessable(AppError):
    """The request is well-formed but cannot be honoured (e.g. too few runs to fit)."""

    status_code = 422


class PayloadTooLarge(AppError):
    """The request body or a list in it exceeds a documented limit."""

    status_code = 413


class Unauthorized(AppError):
    """A write route was called without the configured API key."""

    status_code = 401


class ServiceUnavailable(AppError):
    """A dependency (database, broker) is down; retrying later may succeed."""

    status_code = 503
