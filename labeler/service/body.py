"""JSON request bodies parsed off the event loop, with clear 422s and counts checked first.

FastAPI parses bodies on the event loop, answers a non-UTF-8 or deeply nested body with a bare 400
"error parsing the body", and lists every validation error (a 30 MB body of bad items gave a
200 MB answer). Here a body is decoded, parsed, counted and validated in a worker thread, so
``/healthz`` answers meanwhile; every malformed body gets 422 naming the problem; item counts are
checked against the limits before any item is validated; a 422 lists at most
:data:`~labeler.service.errors.MAX_REPORTED_ERRORS` problems.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import TypeAdapter, ValidationError

from labeler.service.errors import ServiceError, format_validation_errors

__all__ = ["MAX_JSON_DEPTH", "body_schema", "parse_json_body"]

T = TypeVar("T")

#: Deepest nesting a request body may have; the deepest valid body has 4 levels.
MAX_JSON_DEPTH = 32


def _invalid(message: str) -> ServiceError:
    return ServiceError(422, "ValidationError", f"body: {message}")


def _depth_exceeds(data: Any, limit: int) -> bool:
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
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
    if _depth_exceeds(data, MAX_JSON_DEPTH):
        raise _invalid(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return data


def _parse(raw: bytes, adapter: TypeAdapter[T], precheck: Callable[[Any], None]) -> T:
    data = load_json(raw)
    precheck(data)
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        for err in errors:
            err["loc"] = ("body", *err["loc"])
        raise ServiceError(422, "ValidationError", format_validation_errors(list(errors))) from None


async def parse_json_body(
    request: Request, adapter: TypeAdapter[T], precheck: Callable[[Any], None] = lambda _data: None
) -> T:
    """Read the body (under the body limits), then parse, ``precheck`` (item counts, on the raw
    JSON) and validate it in a worker thread."""
    raw = await request.body()
    return await asyncio.to_thread(_parse, raw, adapter, precheck)


def body_schema(adapter: TypeAdapter[Any], components: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body validated by ``adapter``; its model schemas are
    added to ``components`` (the app's ``components.schemas``)."""
    schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
    }
