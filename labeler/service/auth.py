"""Bearer-token auth of the service, shared by every router of ``labeler.app``.

The token comes only from ``$DENSEPREF_API_TOKEN`` (never the command line, so ``ps`` cannot show
it). Browsers cannot send a bearer header when they navigate, so the annotation page trades a
``?token=`` for an HttpOnly session cookie once (:func:`session_value`); the cookie holds a value
derived from the token, never the token itself.

The cookie opens only what the page uses (its API, ``/media``: :func:`require_token_or_session`);
labeling, ``/metrics`` and the API documents need the bearer header (:func:`require_token`), which
a browser never adds by itself, so another page on the same host cannot spend the judge's budget
through a user's cookie. Bodies that change state must also say ``Content-Type: application/json``
(:func:`require_json`): an HTML form can send only form types and ``text/plain``.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from labeler.service.errors import ServiceError

__all__ = [
    "SESSION_COOKIE",
    "check_bearer",
    "check_session",
    "require_json",
    "require_token",
    "require_token_or_session",
    "session_value",
]

SESSION_COOKIE = "densepref_session"


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


def session_value(token: str) -> str:
    """The session cookie's value: derived from the token for this one purpose, so the cookie
    can never be replayed as the token."""
    return hmac.new(token.encode(), b"densepref session v1", hashlib.sha256).hexdigest()


def check_session(request: Request, token: str) -> bool:
    cookie = request.cookies.get(SESSION_COOKIE)
    return cookie is not None and hmac.compare_digest(cookie.encode(), session_value(token).encode())


async def require_token(request: Request) -> None:
    """FastAPI dependency: a valid bearer token, when the service has a token (the session cookie
    does not count: see the module doc)."""
    check_bearer(request.headers.get("authorization"), request.app.state.settings.token())


async def require_token_or_session(request: Request) -> None:
    """FastAPI dependency of the annotation page's API: a bearer token or its session cookie."""
    token = request.app.state.settings.token()
    if token is None or check_session(request, token):
        return
    check_bearer(request.headers.get("authorization"), token)


async def require_json(request: Request) -> None:
    """FastAPI dependency: 415 unless the body is declared JSON (``application/json`` or a
    ``+json`` type), which no HTML form can send without the page's own script."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise ServiceError(
            415,
            "UnsupportedMediaType",
            f"the body must be sent as 'Content-Type: application/json', got {media_type or 'none'!r}",
        )
