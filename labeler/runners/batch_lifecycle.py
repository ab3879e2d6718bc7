"""The Batch API lifecycle steps around submitting and collecting (labeler.runners.batch_api):
retrying the polling and download calls, reading what a batch could not answer, building the
resubmission of those lines, deleting the uploaded files.

A batch runs up to 24 hours; one 500 while polling or one 502 on the download must not end it.
What a batch could not answer comes from two places of OpenAI's Batch object (OpenAPI ``Batch``):
``errors.data`` (the batch failed validation: no line ran) and the error file
(``error_file_id``: ``BatchRequestOutput`` lines with ``response: null`` and an ``error``, or a
non-200 ``response``), which also holds the lines an expired or cancelled batch never ran.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from labeler.errors import DenseprefError
from labeler.fileio import split_lines
from labeler.runners.batch_api_files import BatchFile

__all__ = [
    "MAX_SPLITS",
    "RETRY_ATTEMPTS",
    "BatchWaitOver",
    "batch_errors",
    "delete_batch_files",
    "error_lines",
    "split_in_halves",
    "token_limited",
    "with_retries",
    "write_resubmission",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


class BatchWaitOver(DenseprefError):
    """``--batch-max-wait`` passed with batches unfinished; the job's state file is kept, so a
    rerun of the same command polls the same batches (the CLI exits 3, stopped)."""


#: Tries of one polling or download call (5xx, 408/409/429, connection errors), waiting
#: ``backoff * 2**k`` seconds (capped at 5 minutes) between them.
RETRY_ATTEMPTS = 8
MAX_BACKOFF_S = 300.0
_RETRY_STATUS = frozenset({408, 409, 429})


def _transient(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in _RETRY_STATUS
    return isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError))


async def with_retries(
    call: Callable[[], Awaitable[T]],
    what: str,
    *,
    backoff: float = 2.0,
    attempts: int = RETRY_ATTEMPTS,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """``await call()``, again after a transient failure (see RETRY_ATTEMPTS); the last one raises."""
    for attempt in range(attempts):
        try:
            return await call()
        except Exception as exc:
            if not _transient(exc) or attempt == attempts - 1:
                raise
            wait = min(MAX_BACKOFF_S, backoff * 2**attempt)
            log.warning("%s failed (%s); trying again in %.0f s", what, exc, wait)
            await sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def batch_errors(batch: Any) -> list[str]:
    """``errors.data`` of a failed batch, one line each (code, line, message)."""
    errors = getattr(batch, "errors", None)
    out = []
    for error in getattr(errors, "data", None) or []:
        line = f" (line {error.line})" if getattr(error, "line", None) else ""
        out.append(f"{getattr(error, 'code', None) or 'error'}{line}: {getattr(error, 'message', '')}")
    return out


def token_limited(batch: Any) -> bool:
    """The batch failed for OpenAI's enqueued-token limit (``errors.data[].code`` is
    ``token_limit_exceeded``; platform.openai.com/docs/guides/batch#rate-limits): none of its lines ran."""
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    return batch.status == "failed" and any(
        getattr(e, "code", None) == "token_limit_exceeded" for e in errors
    )


#: Times a file refused for the enqueued-token limit on its own is halved (a part is then 1/64 of it
#: at the smallest); a single line over the limit can only fail.
MAX_SPLITS = 6


def split_in_halves(item: BatchFile) -> list[BatchFile]:
    """Two files holding the first and second half of ``item``'s lines (tokens shared in
    proportion), for a file the enqueued-token limit refuses even with nothing else in flight:
    submitting it whole again can only fail the same way."""
    source = Path(item.path)
    keys = [
        json.loads(raw)["custom_id"] for raw in split_lines(source.read_text(encoding="utf-8")) if raw.strip()
    ]
    half = len(keys) // 2
    parts = []
    for name, chosen in (("a", keys[:half]), ("b", keys[half:])):
        target = source.with_name(f"{source.stem}.{name}.jsonl")
        lines, size = write_resubmission(source, set(chosen), target)
        tokens = round(item.tokens * lines / max(1, item.requests))
        parts.append(BatchFile(str(target), lines, size, tokens, round=item.round, splits=item.splits + 1))
    return parts


def error_lines(text: str) -> dict[str, str]:
    """custom_id -> reason, for every line of a batch's error file."""
    reasons: dict[str, str] = {}
    for raw in split_lines(text):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            key = line["custom_id"]
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable line in a batch error file: %r", raw[:200])
            continue
        error = line.get("error") or {}
        response = line.get("response") or {}
        if isinstance(error, dict) and error:
            reasons[str(key)] = f"{error.get('code') or 'error'}: {error.get('message') or ''}"
        else:
            body = response.get("body") if isinstance(response, dict) else None
            message = (body or {}).get("error", {}).get("message") if isinstance(body, dict) else None
            reasons[str(key)] = f"status {response.get('status_code')}: {message or ''}"
    return reasons


def write_resubmission(source: Path, keys: set[str], target: Path) -> tuple[int, int]:
    """The lines of input file ``source`` whose custom_id is in ``keys``, into ``target``:
    (lines, bytes)."""
    lines = [raw for raw in split_lines(source.read_text(encoding="utf-8")) if raw.strip()]
    chosen = [raw for raw in lines if json.loads(raw)["custom_id"] in keys]
    text = "".join(raw + "\n" for raw in chosen)
    target.write_text(text, encoding="utf-8")
    return len(chosen), len(text.encode())


async def delete_batch_files(client: Any, file_ids: Iterable[str | None], backoff: float) -> int:
    """Delete the uploaded input and the output/error files of collected batches; a file already
    gone (404) counts as deleted. Returns how many were deleted."""
    import openai

    deleted = 0
    for file_id in {f for f in file_ids if f}:
        try:
            await with_retries(partial(client.files.delete, file_id), f"deleting {file_id}", backoff=backoff)
        except openai.NotFoundError:
            pass
        except openai.APIError as exc:
            log.warning("could not delete batch file %s: %s", file_id, exc)
            continue
        deleted += 1
    return deleted
