"""The OpenAI Batch API of the stand-in: files, batches, and running a batch's lines."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from typing import Any

from labeler.fileio import split_lines
from labeler.standin.state import StandinState

# --------------------------------------------------------------------------- Batch API


def _now() -> int:
    return int(time.time())


def _file_object(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "content"}


def _store_file(state: StandinState, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": "file-" + uuid.uuid4().hex[:24],
        "object": "file",
        "bytes": len(content),
        "created_at": _now(),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "content": content,
    }
    state.files[record["id"]] = record
    return record


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """form field -> (filename, bytes), with the standard library's MIME parser."""
    from email import policy
    from email.parser import BytesParser

    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ValueError("expected a multipart/form-data body")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            payload = part.get_payload(decode=True)
            fields[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


def _batch_line_error(line: Any, number: int) -> str | None:
    if not isinstance(line, dict):
        return f"line {number}: not a JSON object"
    for key in ("custom_id", "method", "url", "body"):
        if key not in line:
            return f"line {number}: missing {key!r}"
    if line["method"] != "POST" or line["url"] != "/v1/chat/completions":
        return f"line {number}: only POST /v1/chat/completions is supported"
    return None


_UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")


def _token_limit_errors(
    state: StandinState, batch_id: str, lines: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """OpenAI's enqueued-token limit: the input tokens of a model's unfinished batches, this one
    included, must stay within the limit, or this batch fails with ``token_limit_exceeded``."""
    from labeler.judges.pricing import chat_input_tokens

    limit = state.config.batch_enqueued_token_limit
    model = str(lines[0]["body"].get("model", ""))
    try:
        tokens = sum(chat_input_tokens(line["body"]["messages"], model)[0] for line in lines)
    except (KeyError, TypeError, ValueError, AttributeError):
        tokens = 0  # unreadable lines fail one by one when they run
    state.enqueued_tokens[batch_id] = tokens
    if limit is None:
        return []
    others = sum(
        n
        for bid, n in state.enqueued_tokens.items()
        if bid != batch_id and state.batches[bid]["status"] in _UNFINISHED
    )
    if others + tokens <= limit:
        return []
    message = (
        f"Enqueued token limit reached for {model} in organization org-standin. Limit: {limit:,} enqueued "
        f"tokens. Please try submitting your batch again later."
    )
    state.enqueued_tokens[batch_id] = 0
    return [{"code": "token_limit_exceeded", "message": message, "param": None, "line": None}]


def _parse_input(raw: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The input file's request lines, and its invalid lines as OpenAI's batch ``errors``."""
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for number, text in enumerate(split_lines(raw), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.append({"code": "invalid_json_line", "message": f"line {number}: {exc}", "line": number})
            continue
        problem = _batch_line_error(line, number)
        if problem:
            errors.append({"code": "invalid_request", "message": problem, "line": number})
        lines.append(line)
    return lines, errors


def _fail_validation(batch: dict[str, Any], errors: list[dict[str, Any]]) -> None:
    """The batch fails validation with these errors (an empty input file is one too)."""
    if not errors:
        errors = [{"code": "empty_file", "message": "the input file holds no requests", "line": None}]
    batch.update(status="failed", failed_at=_now(), errors={"object": "list", "data": errors})


async def run_batch(state: StandinState, batch_id: str) -> None:
    """validating -> in_progress -> finalizing -> completed (or failed / cancelled)."""
    batch = state.batches[batch_id]
    await asyncio.sleep(state.config.batch_delay_s)
    raw = state.files[batch["input_file_id"]]["content"].decode("utf-8", errors="replace")
    lines, errors = _parse_input(raw)
    if not errors and lines:
        errors = _token_limit_errors(state, batch_id, lines)
    if errors or not lines:
        _fail_validation(batch, errors)
        return
    batch.update(status="in_progress", in_progress_at=_now())
    batch["request_counts"]["total"] = len(lines)
    outputs: list[str] = []
    failures: list[str] = []

    pending = deque(lines)

    async def worker() -> None:
        # A pool of max_concurrency workers, each checking for a cancel before its next line.
        limit = state.config.batch_expire_after
        while pending and batch["status"] not in ("cancelling", "expiring"):
            if limit is not None and sum(batch["request_counts"].values()) - len(lines) >= limit:
                batch["status"] = "expiring"  # the 24 h window ran out (internal, never shown)
                break
            line = pending.popleft()
            status, payload, _ = await state.complete(
                line["body"], f"Bearer {state.config.api_key}", batch=True
            )
            out = {
                "id": "batch_req_" + uuid.uuid4().hex[:24],
                "custom_id": line["custom_id"],
                "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": payload},
                "error": None,
            }
            (outputs if status == 200 else failures).append(json.dumps(out))
            batch["request_counts"]["completed" if status == 200 else "failed"] += 1

    await asyncio.gather(*(worker() for _ in range(max(1, min(state.config.max_concurrency, len(lines))))))
    cancelled = batch["status"] == "cancelling"
    expired = batch["status"] == "expiring"
    # OpenAI's BatchRequestOutput for lines never run: response null, the reason in ``error``.
    code = "batch_cancelled" if cancelled else "batch_expired"
    for line in pending:
        error = {"code": code, "message": f"This line was not executed because the batch was {code[6:]}."}
        failures.append(json.dumps({"id": "batch_req_" + uuid.uuid4().hex[:24], "custom_id": line["custom_id"],
                                    "response": None, "error": error}))  # fmt: skip
        batch["request_counts"]["failed"] += 1
    batch.update(status="cancelling" if cancelled else "finalizing", finalizing_at=_now())
    if outputs:
        batch["output_file_id"] = _store_file(
            state, ("\n".join(outputs) + "\n").encode(), "output.jsonl", "batch_output"
        )["id"]
    if failures:
        batch["error_file_id"] = _store_file(
            state, ("\n".join(failures) + "\n").encode(), "errors.jsonl", "batch_output"
        )["id"]
    if cancelled:
        batch.update(status="cancelled", cancelled_at=_now())
    elif expired:
        batch.update(status="expired", expired_at=_now())
    else:
        batch.update(status="completed", completed_at=_now())
