"""Checks made before any work, so a run that cannot succeed says so in one line (exit 2) instead of
failing every pair: the API key is there, the endpoint answers ``GET /models``, and accepts the key,
and the model is one the server serves.

The model name is checked against ``GET /models`` only where that list is the whole truth: OpenAI's
own API (it lists every model the key may use, fine-tunes included) and ``vllm serve`` (it lists
its served names, ``owned_by: "vllm"``, and answers 404 for any other). Gateways, Azure deployments
and other proxies accept names they do not list, so there an unknown model is a 404 on the first
request, which is fatal; five pairs in a row stop the run (``labeler.runners.local.FATAL_STREAK_LIMIT``).
"""

from __future__ import annotations

import httpx

from labeler.errors import PreflightError

__all__ = ["PREFLIGHT_TIMEOUT", "PreflightError", "check_openai_endpoint"]

#: Seconds the endpoint has to answer ``GET /models``: a server that is up answers at once.
PREFLIGHT_TIMEOUT = 15.0


def check_openai_endpoint(
    base_url: str,
    api_key: str | None,
    *,
    official: bool,
    model: str | None = None,
    timeout: float = PREFLIGHT_TIMEOUT,
    transport: httpx.BaseTransport | None = None,
) -> None:
    """Raise PreflightError unless ``base_url`` answers ``GET /models`` with this key (and, where the
    list is authoritative, lists ``model``). ``transport`` is for tests."""
    if not api_key and official:
        raise PreflightError(
            f"no API key for {base_url}: set OPENAI_API_KEY (or give --base-url for a self-hosted server)"
        )
    headers = {"Authorization": f"Bearer {api_key or 'EMPTY'}"}
    try:
        with httpx.Client(transport=transport, timeout=timeout) as client:
            response = client.get(f"{base_url}/models", headers=headers)
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
    if model is not None:
        _check_model_listed(base_url, model, response, official=official)


def _check_model_listed(base_url: str, model: str, response: httpx.Response, *, official: bool) -> None:
    """Refuse ``model`` when an authoritative model list (see the module's docstring) lacks it."""
    try:
        cards = response.json()["data"]
        served = {str(card["id"]): str(card.get("owned_by", "")) for card in cards}
    except (ValueError, KeyError, TypeError):
        return  # not a model list we can read: the first request will say what is wrong
    authoritative = official or (bool(served) and all(owner == "vllm" for owner in served.values()))
    if authoritative and model not in served:
        listed = ", ".join(sorted(served)[:10]) or "none"
        raise PreflightError(
            f"--model {model!r} is not served by {base_url} (GET /models lists: {listed}); "
            "check --model (for vllm serve: the name it was started with, or --served-model-name)"
        )
