"""``GET /media/<relative path>``: videos under ``--media-root``, streamed with HTTP range requests so
a ``<video>`` element can seek (206 Partial Content, ``Accept-Ranges: bytes``, 416 for a range past
the end; Starlette's ``FileResponse`` does the range work, starlette >= 0.49.1).

Paths follow the service's rules (``labeler.service.paths.resolve_media_path``: no URL, no absolute
path, no ``..``, no symlink out of the root). Auth: when the service has an API token, a request
needs either ``Authorization: Bearer <token>`` or a signed URL. A ``<video>`` element cannot send
headers, so the annotation API hands the page URLs signed for one path with an expiry
(``?exp=<unix time>&sig=<HMAC>``): the token itself never appears in a URL, and a leaked URL opens
only that one file until it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from starlette.types import Message, Receive, Scope, Send

from labeler.service.auth import check_bearer, check_session
from labeler.service.errors import ServiceError, error_response
from labeler.service.paths import media_root, resolve_media_path

__all__ = [
    "MEDIA_TYPES",
    "SIGNED_URL_SECONDS",
    "MediaFileResponse",
    "media_url",
    "router",
    "sign_media_path",
    "verify_media_signature",
]

router = APIRouter(tags=["annotation"])

#: Signed media URLs stay valid this long: a working day at the annotation page.
SIGNED_URL_SECONDS = 12 * 3600
MEDIA_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".ogv": "video/ogg",
}


def _signing_key(token: str) -> bytes:
    # A key derived for this one purpose: a media signature can never stand in for the token.
    return hmac.new(token.encode(), b"densepref media url v1", hashlib.sha256).digest()


def sign_media_path(token: str, rel: str, expires: int) -> str:
    """The signature of ``rel`` (a path relative to the media root) valid until ``expires``."""
    return hmac.new(_signing_key(token), f"{rel}\n{expires}".encode(), hashlib.sha256).hexdigest()


def verify_media_signature(
    token: str, rel: str, expires: str | None, sig: str | None, now: float | None = None
) -> bool:
    if not expires or not sig or not expires.isdigit():
        return False
    if int(expires) < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(sign_media_path(token, rel, int(expires)), sig)


def media_url(rel: str, token: str | None, now: float | None = None) -> str:
    """The ``/media/...`` URL of ``rel``, signed when the service has a token."""
    url = "/media/" + quote(rel)
    if token is None:
        return url
    expires = int((time.time() if now is None else now) + SIGNED_URL_SECONDS)
    return url + "?" + urlencode({"exp": expires, "sig": sign_media_path(token, rel, expires)})


class MediaFileResponse(FileResponse):
    """Starlette's FileResponse (ranges, ETag, HEAD), with its own plain-text range refusals (400
    malformed, 416 unsatisfiable) answered in the service's one JSON error shape instead."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = _with_usable_range(scope, os.stat(self.path).st_size)
        replaced = False

        async def send_json_errors(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] in (400, 416):
                replaced = True
                requested = _header(scope, b"range")
                if message["status"] == 416:
                    size = _header(message, b"content-range").rpartition("/")[2]
                    response = error_response(
                        416,
                        "RangeNotSatisfiable",
                        f"Range: {requested!r} starts past the end of the file ({size} bytes)",
                        {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
                    )
                else:
                    response = error_response(400, "InvalidRange", f"Range: {requested!r} is malformed")
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": response.raw_headers,
                    }
                )
                await send({"type": "http.response.body", "body": response.body})
            elif not replaced:  # Starlette's own refusal body is dropped
                await send(message)

        await super().__call__(scope, receive, send_json_errors)


_RANGE_PART = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


def usable_range(value: str, size: int) -> str | None:
    """``value`` (a Range header) as RFC 9110 reads it: None to ignore it (another unit, or a part
    that is not a valid byte range, such as ``bytes=100-50``: serve the whole file), else the
    satisfiable parts only (``bytes=0-5,-0`` -> ``bytes=0-5``); the value unchanged when no part is
    satisfiable (416)."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    kept = []
    for part in spec.split(","):
        m = _RANGE_PART.match(part)
        if m is None or not (m.group(1) or m.group(2)):
            return None
        first, last = m.group(1), m.group(2)
        if first and last and int(first) > int(last):
            return None
        satisfiable = int(first) < size if first else int(last) > 0
        if satisfiable:
            kept.append(f"{first}-{last}")
    return "bytes=" + ",".join(kept) if kept else value


def _with_usable_range(scope: Scope, size: int) -> Scope:
    headers = scope.get("headers", [])
    raw = next((v for k, v in headers if k.lower() == b"range"), None)
    if raw is None:
        return scope
    usable = usable_range(raw.decode("latin-1"), size)
    rest = [(k, v) for k, v in headers if k.lower() != b"range"]
    if usable is not None:
        rest.append((b"range", usable.encode("latin-1")))
    return {**scope, "headers": rest}


def _header(holder: Scope | Message, name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in holder.get("headers", ()) if k.lower() == name), "")


@router.head("/media/{path:path}", include_in_schema=False)  # one documented operation, HEAD alike
@router.get("/media/{path:path}", response_class=FileResponse)
def get_media(path: str, request: Request, root: Annotated[Path, Depends(media_root)]) -> MediaFileResponse:
    """A file under the media root, with range support (seeking in ``<video>``)."""
    token = request.app.state.settings.token()
    if (
        token is not None
        and not check_session(request, token)
        and not verify_media_signature(
            token, path, request.query_params.get("exp"), request.query_params.get("sig")
        )
    ):
        if "sig" in request.query_params and "authorization" not in request.headers:
            raise ServiceError(
                401, "Unauthorized", "the signed media URL is invalid or expired; reload the page"
            )
        check_bearer(request.headers.get("authorization"), token)
    real = resolve_media_path(root, path, field="path")
    media_type = MEDIA_TYPES.get(real.suffix.lower())
    # private: a signed URL must not end up in a shared cache; no-cache: revalidate by ETag.
    return MediaFileResponse(real, media_type=media_type, headers={"Cache-Control": "private, no-cache"})
