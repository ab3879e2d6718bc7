"""Checks made before any work, so a run that cannot succeed says so in one line (exit 2) instead of
failing every pair: the API key is there, the endpoint answers ``GET /models``, and accepts the key.

The model name is not checked against ``GET /models``: servers that accept names they do not list
exist (aliases, the project's stand-in), and an unknown model is a 404 on the first request, which
is fatal; five pairs in a row stop the run (``labeler.runners.local.FATAL_STREAK_LIMIT``).
"""

from __future__ import annotations

import httpx

from labeler.errors import PreflightError

__all__ = ["PREFLIGHT_TIMEOUT", "PreflightError", "check_openai_endpoint"]

#: Seconds the endpoint has to answer ``GET /models``: a server that is up answers at once.
PREFLIGHT_TIMEOUT = 15.0


def check_openai_endpoint(
    base_url: str, api_key: str | None, *, official: bool, timeout: float = PREFLIGHT_TIMEOUT
) -> None:
    """Raise PreflightError unless ``base_url`` answers ``GET /models`` with this key."""
    if not api_key and official:
        raise PreflightError(
            f"no API key for {base_url}: set OPENAI_API_KEY (or give --base-url for a self-hosted server)"
        )
    headers = {"Authorization": f"Bearer {api_key or 'EMPTY'}"}
    try:
        response = httpx.get(f"{base_url}/models", headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        raise PreflightError(
            f"endpoint unreachable: --base-url {base_url} gave no answer to GET /models within {timeout:g} s"
        ) from None
    except httpx.HTTPError as exc:  # refused, no route, DNS, TLS...
        raise PreflightError(
            f"endpoint unreachable: cannot reach --base-url {base_url} ({type(exc).__name__}: {exc}); "
            "is the server running?"
        ) from None
    if response.status_code in (401, 403):
        raise PreflightError(
            f"--base-url {base_url} refused the API key (HTTP {response.status_code}): check OPENAI_API_KEY"
        )
