"""The one error type of the gateway: an HTTP status and a message, sent as a text/plain body."""

from __future__ import annotations


class GatewayError(Exception):
    """A request the gateway refuses: ``status`` is the HTTP status (400, 404, 406, 416, 501, ...)."""

    status = 500

    def __init__(
        self, message: str, *, status: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})


class BadRequest(GatewayError):
    status = 400


class ContentNotFound(GatewayError):
    status = 404


class NotAcceptable(GatewayError):
    status = 406


class RangeNotSatisfiable(GatewayError):
    status = 416


class NotImplementedByGateway(GatewayError):
    status = 501
