"""How the ``openai`` judge reads an endpoint's HTTP errors: the server's message, how long it
asks us to wait, and which of our error types the status maps to (docs/design.md §2.4: the engine
retries TransientJudgeError, never FatalJudgeError).

Pure functions over the SDK's exception attributes (``body``, ``message``, ``status_code``,
``response.headers``), so this module imports neither openai nor httpx.
"""

from __future__ import annotations

import email.utils
import json
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


def _body_message(body: Any, depth: int = 0) -> str | None:
    """The message of an error body in any of the shapes endpoints use: OpenAI's
    ``{"error": {"message": ...}}``, a bare ``{"message": ...}``, Gemini's OpenAI layer's array
    ``[{"error": {...}}]``, an ``error`` that is itself a string, and a message that is itself JSON
    text of one of these (proxies wrap the upstream's answer)."""
    if depth > 4:
        return None
    if isinstance(body, list):
        found = [m for m in (_body_message(item, depth + 1) for item in body) if m]
        return "; ".join(found) or None
    if isinstance(body, str):
        text = body.strip()
        if text[:1] in "[{":
            try:
                return _body_message(json.loads(text), depth + 1) or text
            except ValueError:
                return text
        return text or None
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, (dict, list)) and inner is not body:
            return _body_message(inner, depth + 1)
        if isinstance(inner, str) and inner is not body:
            return _body_message(inner, depth + 1)
        message = body.get("message") or body.get("detail")
        if message:
            nested = _body_message(message, depth + 1) if isinstance(message, str) else None
            return nested or str(message)
    return None


def server_message(exc: Any) -> str:
    """The server's own error message (see :func:`_body_message`), else the exception's."""
    found = _body_message(getattr(exc, "body", None))
    if found:
        return found
    response = getattr(exc, "response", None)
    if response is not None:
        # The SDK reads only a dict body; an array body leaves it a bare "Error code: 400".
        try:
            found = _body_message(response.json())
        except (ValueError, AttributeError, TypeError):
            found = None
        if found:
            return found
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
