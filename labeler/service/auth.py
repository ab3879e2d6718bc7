"""Bearer-token auth of the service, shared by every router of ``labeler.app``.

The token comes only from ``$DENSEPREF_API_TOKEN`` (never the command line, so ``ps`` cannot show
it). Browsers cannot send a bearer header when they navigate, so the annotation page trades a
``?token=`` for an HttpOnly session cookie once (:func:`session_value`); the cookie holds a value
derived from the token, never the token itself.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from labeler.service.errors import ServiceError

__all__ = ["SESSION_COOKIE", "check_bearer", "check_session", "require_token", "session_value"]

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
    """FastAPI dependency: a valid bearer token or session cookie, when the service has a token."""
    token = request.app.state.settings.token()
    if token is None or check_session(request, token):
        return
    check_bearer(request.headers.get("authorization"), token)
