"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status.

The ``type`` values are the ones the OpenAI API returns (and its Python client maps to exception
classes by status: 400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 413/422 as
APIStatusError, 429 RateLimitError, 5xx InternalServerError).
"""

from __future__ import annotations


class APIError(Exception):
    """An error answered to the client as an OpenAI error object."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.headers = headers
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400: the request is malformed or a parameter is out of range."""
    return APIError(400, message, "invalid_request_error", param, code)


def unauthorized(message: str) -> APIError:
    return APIError(401, message, "authentication_error", None, "invalid_api_key")


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, message, "invalid_request_error", param, code)


def model_not_found(name: str, available: list[str]) -> APIError:
    return not_found(f"The model {name!r} does not exist. Available: {', '.join(available)}",
                     param="model", code="model_not_found")


def too_large(limit: int) -> APIError:
    return APIError(413, f"Request body exceeds the limit of {limit} bytes", "invalid_request_error",
                    None, "request_too_large")


def overloaded(message: str) -> APIError:
    return APIError(429, message, "rate_limit_error", None, "rate_limit_exceeded")


def rate_limited(message: str, retry_after: str) -> APIError:
    """429 with ``Retry-After`` (seconds): this client made more requests than its limit."""
    return APIError(429, message, "rate_limit_error", None, "rate_limit_exceeded", {"Retry-After": retry_after})


def server_error(message: str) -> APIError:
    return APIError(500, message, "server_error", None, None)


# Status -> type for errors raised by the framework itself (unknown route, wrong method).
STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
                429: "rate_limit_error"}
