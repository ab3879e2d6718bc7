"""The service's safety rules, shared by every router of ``labeler.app`` (the annotation page too):
one JSON error shape, bearer-token auth, media paths confined to the media root, the request body
size limit, bounded admission of label jobs, inline images decoded under limits.

Every refusal is a :class:`ServiceError` (an ``HTTPException``, so FastAPI passes it through body
parsing untouched) and every error of the app, FastAPI's own included, is answered as
``{"error": {"type": ..., "message": ...}}`` by the handlers :func:`install_error_handlers` adds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labeler.engine import FrameSegment

# The error shape and its handlers live with the response models; re-exported for routers.
from labeler.service.models import (
    LabelInlineRequest,
    ServiceError,
    error_body,
    error_response,
    format_validation_errors,
    install_error_handlers,
)
from labeler.service.settings import ServiceSettings
from labeler.video import VideoInfo

__all__ = [
    "Admission",
    "BodySizeLimit",
    "ServiceError",
    "decode_inline_frames",
    "error_body",
    "error_response",
    "format_validation_errors",
    "install_error_handlers",
    "probe_media",
    "require_token",
    "resolve_media_path",
]

# --------------------------------------------------------------------------- auth


def check_bearer(authorization: str | None, token: str | None) -> None:
    """Raise 401 unless ``authorization`` is ``Bearer <token>``; no-op when ``token`` is None.

    The comparison is constant-time (``hmac.compare_digest``) so response timing reveals nothing
    about how much of a guessed token was right.
    """
    if token is None:
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    if not authorization:
        raise ServiceError(
            401, "Unauthorized", "missing 'Authorization: Bearer <token>' header", headers=challenge
        )
    scheme, _, supplied = authorization.partition(" ")
    if scheme.lower() != "bearer" or not supplied.strip():
        raise ServiceError(
            401, "Unauthorized", "the Authorization header must be 'Bearer <token>'", headers=challenge
        )
    if not hmac.compare_digest(supplied.strip().encode(), token.encode()):
        raise ServiceError(401, "Unauthorized", "invalid API token", headers=challenge)


async def require_token(request: Request) -> None:
    """FastAPI dependency: the bearer token of ``app.state.settings`` (a ServiceSettings), or of
    ``$DENSEPREF_API_TOKEN`` for an app without settings."""
    settings = getattr(request.app.state, "settings", None)
    token = settings.token() if settings is not None else (os.environ.get("DENSEPREF_API_TOKEN") or None)
    check_bearer(request.headers.get("authorization"), token)


# --------------------------------------------------------------------------- media paths

# "http://", "file:", "data:", "s3://"...: a scheme prefix means a URL, and URLs are never fetched.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def resolve_media_path(root: Path, rel: str, *, field: str = "path") -> Path:
    """The real path of ``rel`` inside ``root``, or a ServiceError naming ``field`` and why not:

    - 400: empty, NUL byte, a URL (``http://``, ``file://``... nothing is ever fetched), an
      absolute path, a ``..`` component, or not a regular file;
    - 403: a symlink (or symlinked folder) leading outside ``root``, or a file the service cannot read;
    - 404: nothing there.

    The returned path is fully resolved, so later opens follow no symlink of the request's.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise ServiceError(400, "InvalidPath", f"{field}: the path is empty")
    if "\x00" in rel:
        raise ServiceError(400, "InvalidPath", f"{field}: the path contains a NUL byte")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise ServiceError(400, "InvalidPath", f"{field}: the path is not valid Unicode text") from None
    if _URL.match(rel) or rel.startswith("//"):
        raise ServiceError(
            400,
            "InvalidPath",
            f"{field}: {rel[:80]!r} is a URL; only paths relative to the media root are read",
        )
    if rel.startswith(("/", "\\")) or Path(rel).is_absolute():
        raise ServiceError(
            400, "InvalidPath", f"{field}: {rel[:80]!r} is absolute; give a path relative to the media root"
        )
    if ".." in re.split(r"[/\\]", rel):
        raise ServiceError(
            400, "InvalidPath", f"{field}: {rel[:80]!r} contains '..'; paths must stay in the media root"
        )
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(real_root / rel))
    if real != real_root and real_root not in real.parents:
        raise ServiceError(403, "PathOutsideMediaRoot", f"{field}: {rel[:80]!r} leads outside the media root")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise ServiceError(
            404, "MediaNotFound", f"{field}: {rel[:80]!r} does not exist under the media root"
        ) from None
    except PermissionError as exc:
        raise ServiceError(
            403, "MediaUnreadable", f"{field}: {rel[:80]!r} cannot be accessed: {exc.strerror}"
        ) from None
    except OSError as exc:  # name too long, symlink loop, not a folder on the way...
        raise ServiceError(
            400, "InvalidPath", f"{field}: {rel[:80]!r} cannot be used: {exc.strerror}"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise ServiceError(400, "NotARegularFile", f"{field}: {rel[:80]!r} is not a regular file")
    if not os.access(real, os.R_OK):
        raise ServiceError(403, "MediaUnreadable", f"{field}: {rel[:80]!r} is not readable by the service")
    return real


def probe_media(
    path: Path,
    *,
    field: str = "path",
    max_seconds: float | None = None,
    probe: Callable[[str], VideoInfo] | None = None,
) -> VideoInfo:
    """Probe a resolved media path: its ``VideoInfo``, or 400 saying why it is not a usable video
    (unreadable, no video stream, zero frames, longer than ``max_seconds``). ``probe`` defaults to
    ``labeler.video.probe``; the service passes the engine's memoised one. Blocking (it may open
    the file): call it in a worker thread from async code."""
    from labeler.video import VideoError
    from labeler.video import probe as probe_file

    try:
        info = (probe or probe_file)(str(path))
    except VideoError as exc:
        raise ServiceError(400, "InvalidVideo", f"{field}: {exc.reason}") from None
    if max_seconds is not None and info.duration > max_seconds:
        raise ServiceError(
            400,
            "VideoTooLong",
            f"{field}: the video lasts {info.duration:.1f} s, over the limit of {max_seconds:g} s",
        )
    return info


# --------------------------------------------------------------------------- body size


class BodyTooLarge(ServiceError):
    def __init__(self, limit: int):
        super().__init__(413, "PayloadTooLarge", f"request body exceeds the limit of {limit} bytes")


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413.

    A declared Content-Length over the limit is refused before the body is read; otherwise the
    bytes are counted as they stream in (chunked uploads, lying Content-Length), so an oversized
    body is never buffered whole.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_error(send, BodyTooLarge(self.max_bytes))
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:  # raised outside a route's exception handlers (e.g. in a stream)
            if started:
                raise
            await _send_error(send, exc)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send: Send, exc: ServiceError) -> None:
    response = error_response(exc.status_code, exc.error_type, exc.message, {"Connection": "close"})
    await send(
        {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
    )
    await send({"type": "http.response.body", "body": response.body})


# --------------------------------------------------------------------------- overload


class Admission:
    """Bounded admission of label jobs (running + waiting for the judge): past ``capacity``, a
    request gets 503 + Retry-After at once instead of queueing without bound."""

    def __init__(self, capacity: int, retry_after: int):
        self.capacity, self.retry_after = capacity, retry_after
        self.active = 0
        self.closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    def acquire(self, n: int = 1) -> None:
        if self.closing:
            raise ServiceError(503, "ShuttingDown", "the service is shutting down")
        if self.active + n > self.capacity:
            raise ServiceError(
                503,
                "Overloaded",
                f"{self.active} label jobs in progress, the limit is {self.capacity}; retry later",
                headers={"Retry-After": str(self.retry_after)},
            )
        self.active += n
        self._idle.clear()

    def release(self, n: int = 1) -> None:
        self.active -= n
        if self.active <= 0:
            self.active = 0
            self._idle.set()

    @contextlib.contextmanager
    def slot(self) -> Any:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    async def drain(self, timeout: float) -> bool:
        """Refuse new jobs and wait up to ``timeout`` s for the admitted ones; True if all finished."""
        self.closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


# --------------------------------------------------------------------------- inline frames


def _image_bytes(text: str, field: str) -> bytes:
    payload = text.partition(",")[2] if text.startswith("data:") else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(
            400, "InvalidFrame", f"{field}: not valid base64 (nor a base64 data: URI)"
        ) from None


def _header_pixels(data: bytes, field: str, s: ServiceSettings) -> int:
    """Pixels of an image from its header alone, refused if over the per-image limits."""
    from PIL import Image

    from labeler.images import image_size

    try:
        width, height = image_size(data)
    except (ValueError, Image.DecompressionBombError) as exc:
        # A header over Pillow's own bomb limit (far above ours) is too large, not unreadable.
        bomb = isinstance(exc, Image.DecompressionBombError) or isinstance(
            exc.__cause__, Image.DecompressionBombError
        )
        raise ServiceError(400, "ImageTooLarge" if bomb else "InvalidImage", f"{field}: {exc}") from None
    if max(width, height) > s.max_image_side or width * height > s.max_image_pixels:
        limit = f"{s.max_image_side} px a side and {s.max_image_pixels} pixels"
        raise ServiceError(400, "ImageTooLarge", f"{field}: {width}x{height} is over the limit of {limit}")
    return width * height


def _decode(data: bytes, field: str, max_pixels: int) -> np.ndarray:
    from labeler.images import decode_image

    try:
        return decode_image(data, max_pixels=max_pixels)
    except Exception as exc:  # untrusted bytes: any failure to decode them is the client's bad image
        raise ServiceError(400, "InvalidImage", f"{field}: {exc}") from None


def decode_inline_frames(request: LabelInlineRequest, s: ServiceSettings) -> list[FrameSegment]:
    """Base64 -> RGB arrays under the limits. Every image's size is read from its header and
    checked (side, pixels, the request's total) *before* any pixel is decoded, so decompression
    bombs are refused without allocating them. Blocking: run it in a worker thread."""
    if len(request.segments) > s.max_segments:
        raise ServiceError(
            400, "TooManySegments", f"segments: {len(request.segments)} over the limit of {s.max_segments}"
        )
    sides = ("frames_a", "frames_b")
    for i, seg in enumerate(request.segments):
        if len(seg.frames_a) > s.max_frames_per_segment:
            n, limit = len(seg.frames_a), s.max_frames_per_segment
            raise ServiceError(
                400, "TooManyFrames", f"segments.{i}.frames_a: {n} frames over the limit of {limit}"
            )
    blobs: dict[str, bytes] = {}
    total = 0
    for i, seg in enumerate(request.segments):
        for side in sides:
            for j, text in enumerate(getattr(seg, side)):
                field = f"segments.{i}.{side}.{j}"
                blobs[field] = _image_bytes(text, field)
                total += _header_pixels(blobs[field], field, s)
                if total > s.max_request_pixels:
                    limit = s.max_request_pixels
                    raise ServiceError(
                        400, "TooManyPixels", f"{field}: the frames exceed {limit} pixels in all"
                    )
    segments = []
    for i, seg in enumerate(request.segments):
        arrays = {
            side: [
                _decode(blobs[f"segments.{i}.{side}.{j}"], f"segments.{i}.{side}.{j}", s.max_image_pixels)
                for j in range(len(seg.frames_a))
            ]
            for side in sides
        }
        shapes = sorted({a.shape[:2] for side in sides for a in arrays[side]})
        if len(shapes) > 1:
            message = f"segments.{i}: the frames of a segment (A and B) must share one size, got {shapes}"
            raise ServiceError(400, "FrameSizeMismatch", message)
        segments.append(
            FrameSegment(np.stack(arrays["frames_a"]), np.stack(arrays["frames_b"]), seg.start_s, seg.end_s)
        )
    return segments
