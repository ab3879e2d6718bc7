"""The service's one error table and its one error shape ``{"error": {"type", "message"}}``.

Every failure the service knows maps to a status and a type name here, in :data:`ERROR_TABLE`
(first match wins, so subclasses come before their bases); routes never translate exceptions
themselves. The table names the project's own classes (``labeler.errors``) and pydantic's
validation of a judgment or a record, nothing wider: a bare built-in error from the engine is a
bug, answered 500 and logged, never blamed on the client. Refusals decided by the service (limits, paths, auth) are raised as
:class:`ServiceError` directly. FastAPI's own errors and anything unexpected are answered in the
same shape by the handlers :func:`install_error_handlers` adds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException

from labeler.errors import (
    BudgetExceeded,
    DenseprefError,
    FramesTooSmallError,
    InputError,
    JudgeError,
    VideoError,
    VideoMismatchError,
)
from labeler.schemas import ErrorInfo

__all__ = [
    "ERROR_RESPONSES",
    "ERROR_TABLE",
    "MAX_REPORTED_ERRORS",
    "ErrorResponse",
    "ServiceError",
    "error_response",
    "format_validation_errors",
    "install_error_handlers",
    "service_error",
]

log = logging.getLogger("labeler.app")

#: A 422 lists at most this many problems (a 30 MB body of bad items must not answer 200 MB).
MAX_REPORTED_ERRORS = 20


class ServiceError(HTTPException, DenseprefError):
    """A refusal with a status, a type name for clients to branch on, and a human message."""

    def __init__(
        self, status_code: int, error_type: str, message: str, *, headers: Mapping[str, str] | None = None
    ):
        super().__init__(status_code=status_code, detail=message, headers=dict(headers) if headers else None)
        self.error_type = error_type
        self.message = message


class ErrorResponse(BaseModel):
    """The one error shape of the service."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorInfo


def error_response(
    status_code: int, error_type: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"type": error_type, "message": message}}
    return JSONResponse(body, status_code=status_code, headers=dict(headers or {}))


# --------------------------------------------------------------------------- the table


def _judgment(exc: BaseException) -> bool:
    return isinstance(exc, ValidationError) and exc.title == "Judgment"


@dataclass(frozen=True)
class ErrorRule:
    """``kind`` (when ``applies``) answers ``status`` with ``error_type`` (None: the class name)."""

    kind: type[BaseException]
    status: int
    error_type: str | None
    applies: Callable[[BaseException], bool] = lambda _exc: True
    prefix: str = ""


ERROR_TABLE: tuple[ErrorRule, ...] = (
    ErrorRule(VideoMismatchError, 400, "VideoMismatch"),
    ErrorRule(VideoError, 400, "InvalidVideo"),
    # The judge cannot use this input (frames too small to measure...): the client's fault, not the judge's.
    ErrorRule(FramesTooSmallError, 400, "InputTooSmall"),
    ErrorRule(InputError, 400, "InvalidInput"),
    ErrorRule(JudgeError, 502, None),  # already retried by the engine: the upstream reason goes back
    ErrorRule(BudgetExceeded, 503, "BudgetExceeded"),
    ErrorRule(ValidationError, 502, "InvalidJudgment", _judgment, "the judge gave an invalid answer: "),
    ErrorRule(ValidationError, 422, "InvalidRecord"),  # inputs that cannot form a record (absurd timing)
    # Nothing wider: any other exception (a bare built-in error included) is a bug, answered 500 and logged.
)


def service_error(exc: BaseException, private: Callable[[str], str] = lambda m: m) -> ServiceError:
    """The answer to ``exc`` from :data:`ERROR_TABLE`; ``private`` rewrites server paths in the
    message into the client's own. Raises ``exc`` again when no rule matches (a bug: 500)."""
    if isinstance(exc, ServiceError):
        return exc
    for rule in ERROR_TABLE:
        if isinstance(exc, rule.kind) and rule.applies(exc):
            message = rule.prefix + private(str(exc))
            return ServiceError(rule.status, rule.error_type or type(exc).__name__, message)
    raise exc


#: Names for the statuses Starlette raises on its own (unknown route, wrong method...).
_STATUS_TYPES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationError",
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Bad input: a path, a video, a frame, frames too small for the judge, or a limit.",
        401: "Missing or wrong bearer token (when DENSEPREF_API_TOKEN is set).",
        403: "A path leading outside the media root, or an unreadable file.",
        404: "A path that does not exist under the media root.",
        408: "The request body did not arrive within the body timeout.",
        413: "Request body over the size limit.",
        415: "A body not declared as 'Content-Type: application/json'.",
        422: "Malformed JSON, wrong types or unknown fields (the message names the field).",
        502: "The judge failed after the engine's retries (the upstream reason is in the message).",
        503: "Overloaded (see Retry-After), shutting down, or the judge budget is spent.",
    }.items()
}


# --------------------------------------------------------------------------- 422 messages

_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def clean_message(message: str) -> str:
    """Drop Python object reprs (``<_io.BytesIO object at 0x...>``) that mean nothing to a client."""
    return _OBJECT_REPR.sub("the data", message)


def format_validation_errors(errors: list[Any], limit: int = MAX_REPORTED_ERRORS) -> str:
    """``body.segments.0.frames_a: Field required; ...``: the field path first, as clients need
    it; at most ``limit`` problems, then how many more there were."""
    parts = []
    for err in errors[:limit]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":  # FastAPI puts the character offset in the location
            position = err.get("loc", ("body", "?"))[-1]
            error = (err.get("ctx") or {}).get("error", msg)
            loc, msg = "body", f"invalid JSON at character {position}: {error}"
        parts.append(f"{loc}: {msg}")
    if len(errors) > limit:
        parts.append(f"... and {len(errors) - limit} more problems")
    return "; ".join(parts) or "invalid request"


# --------------------------------------------------------------------------- handlers


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, ServiceError):
        return error_response(exc.status_code, exc.error_type, exc.message, exc.headers)
    error_type = _STATUS_TYPES.get(exc.status_code, f"HTTP{exc.status_code}")
    return error_response(exc.status_code, error_type, str(exc.detail), exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "ValidationError", format_validation_errors(list(exc.errors())))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Never expected: every known failure has a typed answer. Log it whole, answer in the one shape.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "InternalError", f"internal error ({type(exc).__name__}); see the service log")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` (its routers included) in the one JSON shape."""
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
