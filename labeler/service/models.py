"""Request and response models of the HTTP labeling service, apart from the serving logic (as in
vLLM's entrypoints): they define the OpenAPI schema at ``/docs`` and the 422 answers.

Structural rules live here (types, unknown fields, finite numbers, time order); limits that an
operator configures (segments, frames, pixels...) are checked by the service against its
``ServiceSettings``, so they can change without changing the schema.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    FiniteFloat,
    Tag,
    model_validator,
)
from starlette.exceptions import HTTPException

from labeler.schemas import DensePreferenceRecord, ErrorInfo

log = logging.getLogger("labeler.app")

__all__ = [
    "BatchErrorLine",
    "ErrorResponse",
    "HealthResponse",
    "InlineSegment",
    "LabelBatchRequest",
    "LabelByPathRequest",
    "LabelInlineRequest",
    "LabelRequest",
    "ReadyResponse",
    "ServiceError",
    "error_body",
    "error_response",
    "install_error_handlers",
]

_PATH_DOC = "Path relative to the service's --media-root. URLs and absolute paths are refused."


def _utf8(value: str) -> str:
    # JSON may carry lone surrogates ("\ud800"); they cannot become a path, a cache key or a response.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogate code points)") from None
    return value


Text = Annotated[str, AfterValidator(_utf8)]
#: Longest time the API accepts anywhere (segment length, segment bounds): one day.
MAX_SECONDS = 86400.0


class _Strict(BaseModel):
    # Unknown fields are errors: a misspelt "segment_second" must not be silently ignored.
    model_config = ConfigDict(extra="forbid")


class LabelByPathRequest(_Strict):
    """Label two aligned videos the service reads from its media root."""

    prompt: Text = Field(description="The text prompt both videos were generated from.")
    video_a: Text = Field(min_length=1, description=_PATH_DOC)
    video_b: Text = Field(min_length=1, description=_PATH_DOC)
    reference: Text | None = Field(None, min_length=1, description="Ground-truth video. " + _PATH_DOC)
    segment_seconds: FiniteFloat | None = Field(
        None, gt=0, le=MAX_SECONDS, description="Segment length (default: the service's)."
    )
    pair_id: Text | None = Field(
        None, min_length=1, max_length=512, description="Echoed in the record (default: a hash of the paths)."
    )

    def effective_pair_id(self) -> str:
        if self.pair_id:
            return self.pair_id
        blob = "\0".join([self.video_a, self.video_b, self.reference or ""]).encode()
        return "pair-" + hashlib.sha256(blob).hexdigest()[:16]


class InlineSegment(_Strict):
    """One aligned segment: the same number of frames of A and B, base64 JPEG/PNG each (a bare
    base64 string or a ``data:image/...;base64,`` URI)."""

    frames_a: list[str] = Field(min_length=1, description="Frames of video A, in time order.")
    frames_b: list[str] = Field(min_length=1, description="Frames of video B at the same times.")
    start_s: FiniteFloat = Field(ge=0, le=MAX_SECONDS, description="Segment start in seconds.")
    end_s: FiniteFloat = Field(gt=0, le=MAX_SECONDS, description="Segment end in seconds (after start_s).")

    @model_validator(mode="after")
    def _check(self) -> InlineSegment:
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s {self.end_s} must be after start_s {self.start_s}")
        if len(self.frames_a) != len(self.frames_b):
            raise ValueError(
                f"frames_a has {len(self.frames_a)} frames but frames_b has {len(self.frames_b)}; "
                "A and B must be aligned frame by frame"
            )
        return self


class LabelInlineRequest(_Strict):
    """Label segments whose frames the caller already holds in memory."""

    prompt: Text = Field(description="The text prompt both videos were generated from.")
    segments: list[InlineSegment] = Field(min_length=1, description="Aligned segments, in time order.")
    pair_id: Text | None = Field(None, min_length=1, max_length=512, description="Echoed in the record.")

    @model_validator(mode="after")
    def _in_order(self) -> LabelInlineRequest:
        for i in range(1, len(self.segments)):
            if self.segments[i].start_s < self.segments[i - 1].end_s:
                raise ValueError(
                    f"segments {i - 1} and {i} overlap or are out of order: segment {i} starts at "
                    f"{self.segments[i].start_s} s, before segment {i - 1} ends at {self.segments[i - 1].end_s} s"
                )
        return self


def _request_form(body: Any) -> str:
    # The inline form is the one with "segments"; everything else is validated as the by-path form,
    # so its errors name the by-path fields.
    if isinstance(body, dict):
        return "inline" if "segments" in body else "path"
    return "inline" if isinstance(body, LabelInlineRequest) else "path"


LabelRequest = Annotated[
    Annotated[LabelByPathRequest, Tag("path")] | Annotated[LabelInlineRequest, Tag("inline")],
    Discriminator(_request_form),
]


class LabelBatchRequest(_Strict):
    """Several by-path pairs; the answer streams one NDJSON line per pair as each completes."""

    pairs: list[LabelByPathRequest] = Field(
        min_length=1, description="Pairs to label (see the service's limit)."
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> LabelBatchRequest:
        seen: dict[str, int] = {}
        for i, pair in enumerate(self.pairs):
            pid = pair.effective_pair_id()
            if pid in seen:
                raise ValueError(
                    f"pairs {seen[pid]} and {i} share pair_id {pid!r}; stream lines would be ambiguous"
                )
            seen[pid] = i
        return self


class ErrorResponse(_Strict):
    """The one error shape of the service."""

    error: ErrorInfo


class BatchErrorLine(_Strict):
    """An NDJSON line of /label/batch for a pair that failed (the other pairs go on)."""

    pair_id: str
    error: ErrorInfo
    status: int = Field(description="The HTTP status this error would have had on POST /label.")


class HealthResponse(_Strict):
    status: Literal["ok"] = "ok"


class ReadyResponse(_Strict):
    status: Literal["ready", "not ready"]
    judge: str
    model: str | None = None
    detail: str | None = None


#: The record of DESIGN §2.3, re-exported for the OpenAPI schema.
LabelResponse = DensePreferenceRecord

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Bad input: a path, a video, a frame or a limit (the message names the field).",
        401: "Missing or wrong bearer token (when DENSEPREF_API_TOKEN is set).",
        403: "A path leading outside the media root, or an unreadable file.",
        404: "A path that does not exist under the media root.",
        413: "Request body over the size limit.",
        422: "Malformed JSON, wrong types or unknown fields (the message names the field).",
        502: "The judge failed after the engine's retries (the upstream reason is in the message).",
        503: "Overloaded (see Retry-After), shutting down, or the judge budget is spent.",
    }.items()
}


# --------------------------------------------------------------------------- the one error shape

# Names for the statuses Starlette raises on its own (unknown route, wrong method...).
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


class ServiceError(HTTPException):
    """A refusal with a status, a type name for clients to branch on, and a human message."""

    def __init__(
        self, status_code: int, error_type: str, message: str, *, headers: Mapping[str, str] | None = None
    ):
        super().__init__(status_code=status_code, detail=message, headers=dict(headers) if headers else None)
        self.error_type = error_type
        self.message = message


def error_body(error_type: str, message: str) -> dict[str, Any]:
    """The one error shape of the service."""
    return {"error": {"type": error_type, "message": message}}


def error_response(
    status_code: int, error_type: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(error_type, message), status_code=status_code, headers=dict(headers or {}))


# --------------------------------------------------------------------------- error handlers


def format_validation_errors(errors: list[dict[str, Any]]) -> str:
    """``body.segments.0.frames_a: Field required; ...``: the field path first, as clients need it."""
    parts = []
    for err in errors:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":  # FastAPI puts the character offset in the location
            position = err.get("loc", ("body", "?"))[-1]
            loc, msg = (
                "body",
                f"invalid JSON at character {position}: {(err.get('ctx') or {}).get('error', msg)}",
            )
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts) or "invalid request"


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
