"""uvicorn's h11 protocol with a deadline on request headers.

uvicorn bounds the idle time between requests (``timeout_keep_alive``) but not the time a client
takes to send a request's headers: a client sending one byte a second holds a connection forever.
Here each request's headers must be complete within ``header_timeout`` seconds of its first byte
(or of the connection, for the first request); past it the connection is closed. The body has its
own deadline (``labeler.service.limits.BodyLimits``).

``python -m labeler.app`` uses it with ``--header-timeout-seconds``; uvicorn CLI users pass
``--http labeler.service.http_protocol:HeaderDeadlineProtocol`` (10 s, or
``$DENSEPREF_HEADER_TIMEOUT_SECONDS``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HeaderDeadlineProtocol", "protocol_with_header_timeout"]


class HeaderDeadlineProtocol(H11Protocol):
    header_timeout: float = float(os.environ.get("DENSEPREF_HEADER_TIMEOUT_SECONDS") or 10.0)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaiting_headers = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            self.logger.info("closing a connection whose request headers took over %g s", self.header_timeout)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers and self._header_timer is None:
            self._arm()  # the first byte of a next request on a kept-alive connection
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # uvicorn starts a cycle once a request's headers are parsed
            self._awaiting_headers = False
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._awaiting_headers = True  # the next request's clock starts with its first byte
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_with_header_timeout(seconds: float) -> type[HeaderDeadlineProtocol]:
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": seconds})
