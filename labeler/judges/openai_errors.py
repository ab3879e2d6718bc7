"""How the ``openai`` judge reads an endpoint's HTTP errors: the server's message, how long it
asks us to wait, and which of our error types the status maps to (docs/design.md §2.4: the engine
retries TransientJudgeError, never FatalJudgeError).

Pure functions over the SDK's exception attributes (``body``, ``message``, ``status_code``,
``response.headers``), so this module imports neither openai nor httpx.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

from labeler.schemas import FatalJudgeError, JudgeError, TransientJudgeError

__all__ = ["TRANSIENT_STATUS", "retry_after", "server_message", "status_error"]

#: Besides every 5xx: request timeout, conflict, rate limit.
TRANSIENT_STATUS = frozenset({408, 409, 429})


def retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds or HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


def server_message(exc: Any) -> str:
    """The server's own error message (``{"error": {"message": ...}}``), else the exception's."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(exc, "message", None) or exc)


def status_error(exc: Any, where: str) -> JudgeError:
    """Our error for an ``openai.APIStatusError`` (a 400 the judge adapts to is handled before).

    429, 408, 409 and 5xx are transient and carry the server's retry-after; anything else is
    fatal, with a hint for the usual causes. ``where`` names the model and endpoint.
    """
    status = exc.status_code
    message = server_message(exc)
    if status == 429:
        return TransientJudgeError(
            f"rate limited (429): {message}", retry_after=retry_after(exc.response.headers), status=429
        )
    if status >= 500 or status in TRANSIENT_STATUS:
        return TransientJudgeError(
            f"server error ({status}): {message}",
            retry_after=retry_after(exc.response.headers),
            status=status,
        )
    hint = {401: " (check the API key)", 403: " (check the API key)", 404: " (check the model name)"}
    return FatalJudgeError(f"{where}: HTTP {status}{hint.get(status, '')}: {message}")
