"""Limits that keep the service up under hostile or careless clients: request bodies bounded in
size and in time, admission of label jobs bounded in number and in decoded pixels.

Each limit is a setting (``labeler.service.settings``) and is listed, with its refusal, in the
README's limits table.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labeler.service.errors import ServiceError, error_response

__all__ = ["Admission", "BodyLimits", "PixelBudget"]

_CLOSE = {"Connection": "close"}  # uvicorn closes the connection after such a response: no more reading


class BodyTooLarge(ServiceError):
    def __init__(self, limit: int):
        super().__init__(
            413, "PayloadTooLarge", f"request body exceeds the limit of {limit} bytes", headers=_CLOSE
        )


class BodyTimeout(ServiceError):
    def __init__(self, seconds: float):
        super().__init__(
            408, "RequestTimeout", f"the request body did not arrive within {seconds:g} s", headers=_CLOSE
        )


class BodyLimits:
    """ASGI middleware: request bodies over ``max_bytes`` get 413, bodies not complete within
    ``timeout`` seconds get 408, and both close the connection so nothing more is read.

    A declared Content-Length over the limit is refused before the body is read; otherwise the
    bytes are counted as they stream in (chunked uploads, lying Content-Length), so an oversized
    body is never buffered whole. The deadline covers the whole body, so a client trickling one
    byte a second cannot hold a connection.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_error(send, BodyTooLarge(self.max_bytes))
            return
        body = _BodyReader(receive, self.max_bytes, self.timeout)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, body.receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as exc:  # raised outside a route's handlers (a stream)
            if started:
                raise
            await _send_error(send, exc)


class _BodyReader:
    """``receive`` counting the body's bytes against ``max_bytes`` and its time against one deadline."""

    def __init__(self, receive: Receive, max_bytes: int, timeout: float):
        self._receive, self.max_bytes, self.timeout = receive, max_bytes, timeout
        self.deadline = time.monotonic() + timeout
        self.seen = 0
        self.done = False

    async def receive(self) -> Message:
        if self.done:  # after the body: waiting for a disconnect has no deadline
            return await self._receive()
        try:
            message = await asyncio.wait_for(self._receive(), max(self.deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            raise BodyTimeout(self.timeout) from None
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            self.done = not message.get("more_body", False)
        return message


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send: Send, exc: ServiceError) -> None:
    response = error_response(exc.status_code, exc.error_type, exc.message, _CLOSE)
    await send(
        {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
    )
    await send({"type": "http.response.body", "body": response.body})


class Admission:
    """Bounded admission of label jobs (running + waiting for the judge): past ``capacity``, a
    request gets 503 + Retry-After at once instead of queueing without bound."""

    def __init__(self, capacity: int, retry_after: int):
        self.capacity, self.retry_after = capacity, retry_after
        self.active = 0
        self.closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    def overloaded(self, message: str) -> ServiceError:
        return ServiceError(503, "Overloaded", message, headers={"Retry-After": str(self.retry_after)})

    def acquire(self, n: int = 1) -> None:
        if self.closing:
            raise ServiceError(503, "ShuttingDown", "the service is shutting down")
        if self.active + n > self.capacity:
            raise self.overloaded(
                f"{self.active} label jobs in progress, the limit is {self.capacity}; retry later"
            )
        self.active += n
        self._idle.clear()

    def release(self, n: int = 1) -> None:
        self.active -= n
        if self.active <= 0:
            self.active = 0
            self._idle.set()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    async def drain(self, timeout: float) -> bool:
        """Refuse new jobs and wait up to ``timeout`` s for the admitted ones; True if all finished."""
        self.closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


class PixelBudget:
    """Decoded inline pixels held by all admitted jobs together: a job takes its pixels (counted
    from the image headers, before decoding) and gives them back when it ends; past ``capacity``
    it gets 503 + Retry-After. Thread-safe: decoding runs in worker threads."""

    def __init__(self, capacity: int, admission: Admission):
        self.capacity = capacity
        self.admission = admission
        self.held = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._lock:
            if self.held + pixels > self.capacity:
                raise self.admission.overloaded(
                    f"admitted jobs hold {self.held} decoded pixels; {pixels} more would pass the "
                    f"limit of {self.capacity}; retry later"
                )
            self.held += pixels
        try:
            yield
        finally:
            with self._lock:
                self.held -= pixels
