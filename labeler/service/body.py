"""JSON request bodies parsed away from the event loop, with clear 422s and counts checked first.

FastAPI parses bodies on the event loop, answers a non-UTF-8 or deeply nested body with a bare 400
"error parsing the body", and lists every validation error (a 30 MB body of bad items gave a
200 MB answer). Here a body is decoded, parsed, counted against the limits (before any item is
validated) and validated outside the event loop; every malformed body gets 422 naming the problem;
a 422 lists at most :data:`~labeler.service.errors.MAX_REPORTED_ERRORS` problems.

``json.loads`` holds the GIL for its whole run (10 s for a 30 MB body of a million items on a busy
machine), so a thread would still stall the loop: bodies from :data:`PROCESS_BODY_BYTES` up are
parsed in a worker process, which sends back only the validated request (bounded by the limits)
or the error. Smaller bodies parse in a thread.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect

from labeler.orphan_guard import exit_with_parent
from labeler.service.errors import ServiceError, format_validation_errors
from labeler.service.models import LABEL_BATCH_REQUEST, LABEL_REQUEST

__all__ = ["MAX_JSON_DEPTH", "PROCESS_BODY_BYTES", "BodyCounts", "BodyParser", "body_schema", "parse_body"]

#: Deepest nesting a request body may have; the deepest valid body has 4 levels.
MAX_JSON_DEPTH = 32
#: Bodies this large or larger are parsed in a worker process.
PROCESS_BODY_BYTES = 1 << 20
#: Large bodies one worker process parses before it is replaced.
WORKER_BODIES = 16

BodyKind = Literal["label", "batch"]
_ADAPTERS: dict[str, TypeAdapter[Any]] = {"label": LABEL_REQUEST, "batch": LABEL_BATCH_REQUEST}
#: ("ok", request) or ("error", status, type, message): plain values cross the process boundary.
Outcome = tuple[Any, ...]


@dataclass(frozen=True)
class BodyCounts:
    """The item counts checked on the raw JSON, before validation (see the service settings)."""

    max_segments: int
    max_frames_per_segment: int
    max_batch_pairs: int


def _invalid(message: str) -> ServiceError:
    return ServiceError(422, "ValidationError", f"body: {message}")


def _depth_exceeds(data: Any, limit: int) -> bool:
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def load_json(raw: bytes) -> Any:
    """The parsed body, or 422 saying why it is not JSON (not UTF-8, bad syntax, too deep)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(f"not UTF-8 text (byte {exc.start} is {raw[exc.start : exc.start + 1]!r})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _invalid(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise _invalid(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    if isinstance(data, dict | list) and _depth_exceeds(data, MAX_JSON_DEPTH):
        raise _invalid(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return data


def check_counts(data: Any, kind: BodyKind, counts: BodyCounts) -> None:
    """400 for a body with more segments, frames or pairs than the limits, before validation."""
    if not isinstance(data, dict):
        return
    items = data.get("pairs" if kind == "batch" else "segments")
    if not isinstance(items, list):
        return
    if kind == "batch" and len(items) > counts.max_batch_pairs:
        message = f"pairs: {len(items)} over the limit of {counts.max_batch_pairs} per batch"
        raise ServiceError(400, "TooManyPairs", message)
    if kind == "label" and len(items) > counts.max_segments:
        message = f"segments: {len(items)} over the limit of {counts.max_segments}"
        raise ServiceError(400, "TooManySegments", message)
    for i, segment in enumerate(items if kind == "label" else ()):
        for side in ("frames_a", "frames_b"):
            frames = segment.get(side) if isinstance(segment, dict) else None
            if isinstance(frames, list) and len(frames) > counts.max_frames_per_segment:
                limit = counts.max_frames_per_segment
                message = f"segments.{i}.{side}: {len(frames)} frames over the limit of {limit}"
                raise ServiceError(400, "TooManyFrames", message)


def parse_body(raw: bytes, kind: BodyKind, counts: BodyCounts) -> Outcome:
    """Decode, parse, count and validate a body (in a worker thread or process)."""
    try:
        data = load_json(raw)
        check_counts(data, kind, counts)
        try:
            return ("ok", _ADAPTERS[kind].validate_python(data))
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            for err in errors:
                err["loc"] = ("body", *err["loc"])
            raise ServiceError(422, "ValidationError", format_validation_errors(list(errors))) from None
    except ServiceError as exc:
        return ("error", exc.status_code, exc.error_type, exc.message)


class BodyParser:
    """Parses the service's JSON bodies (see the module docstring); one worker process, started
    on the first large body and replaced every :data:`WORKER_BODIES` to give its memory back."""

    def __init__(self, counts: BodyCounts):
        self.counts = counts
        self._pool: ProcessPoolExecutor | None = None
        self._parsed = 0

    def _workers(self) -> ProcessPoolExecutor:
        self._parsed += 1
        if self._pool is not None and self._parsed % WORKER_BODIES == 0:
            self._pool.shutdown(wait=False)  # its running body finishes; the memory goes back
            self._pool = None
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # no fork of a threaded server
            # initializer: the worker ends with the service, even one killed without clean-up
            self._pool = ProcessPoolExecutor(
                1, mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(),)
            )
        return self._pool

    async def parse(self, request: Request, kind: BodyKind) -> BaseModel:
        try:
            raw = await request.body()
        except ClientDisconnect:  # it left mid-body: its own failure (499), not the service's (500)
            raise ServiceError(
                499, "ClientClosedRequest", "the client disconnected before its body arrived"
            ) from None
        if len(raw) < PROCESS_BODY_BYTES:
            outcome = await asyncio.to_thread(parse_body, raw, kind, self.counts)
        else:
            try:
                pool = self._workers()
                outcome = await asyncio.get_running_loop().run_in_executor(
                    pool, parse_body, raw, kind, self.counts
                )
            except BrokenProcessPool:  # the worker died (out of memory?): a fresh one next time
                self._pool = None
                raise ServiceError(503, "Overloaded", "the body parser restarted; retry") from None
        if outcome[0] == "error":
            _, status, error_type, message = outcome
            raise ServiceError(status, error_type, message)
        request_model: BaseModel = outcome[1]
        return request_model

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def body_schema(adapter: TypeAdapter[Any], components: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body validated by ``adapter``; its model schemas are
    added to ``components`` (the app's ``components.schemas``)."""
    schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
    }
