"""How label jobs end: when the client leaves, when the service shuts down, and what the logs keep.

* A client that disconnects from ``POST /label`` cancels its job, which frees its admission slot
  (``/label/batch`` pairs are cancelled when the stream's client leaves).
* On SIGTERM the service refuses new jobs and gives running ones until shortly before uvicorn's
  ``--shutdown-grace-seconds`` runs out; then it cancels them itself, so each still gets an answer
  in the JSON error shape (503 ``ShuttingDown``) and every NDJSON stream ends with one error line
  per unfinished pair, instead of uvicorn's plain-text 500 and a cut stream.
* The access log never shows a ``token=`` query value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import threading
from collections.abc import AsyncIterator, Coroutine
from types import FrameType
from typing import Any, TypeVar

from fastapi import Request

from labeler.service.errors import ServiceError
from labeler.service.service import LabelService, batch_error_line

__all__ = ["Lifecycle", "RedactTokens", "label_until_disconnect", "ndjson_lines"]

log = logging.getLogger("labeler.app")
T = TypeVar("T")


def shutting_down() -> ServiceError:
    return ServiceError(503, "ShuttingDown", "the service shut down before this job finished; retry")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def label_until_disconnect(request: Request, job: Coroutine[Any, Any, T]) -> T:
    """Run ``job`` as a task the service can cancel at shutdown; cancel it when the client leaves."""
    service: LabelService = request.app.state.service
    task = asyncio.create_task(job)
    service.jobs.add(task)
    watcher = asyncio.create_task(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            if task.cancelled():
                raise shutting_down()
            return task.result()
        task.cancel()  # the client left: stop its job and free its slot now
        await asyncio.gather(task, return_exceptions=True)
        log.info("%s %s: the client disconnected; its job was cancelled", request.method, request.url.path)
        raise ServiceError(499, "ClientClosedRequest", "the client disconnected")
    finally:
        task.cancel()
        watcher.cancel()
        service.jobs.discard(task)


async def ndjson_lines(tasks: list[tuple[str, asyncio.Task[dict[str, Any]]]]) -> AsyncIterator[bytes]:
    """One JSON line per pair as it completes; a pair cancelled by shutdown gets its error line."""
    pair_ids = {task: pair_id for pair_id, task in tasks}
    pending = set(pair_ids)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                line = (
                    batch_error_line(pair_ids[task], shutting_down()) if task.cancelled() else task.result()
                )
                yield (json.dumps(line) + "\n").encode()
    finally:  # the client went away: stop the pairs still running
        for task in pair_ids:
            task.cancel()


class Lifecycle:
    """SIGTERM handling of the service (see the module docstring)."""

    def __init__(self, service: LabelService):
        self.service = service
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch_signals(self) -> None:
        """Chain onto uvicorn's SIGTERM/SIGINT handlers (only possible in the main thread: not
        under a test client, which never gets signals anyway)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self.begin_shutdown)
                if callable(previous):
                    previous(signum, frame)

            signal.signal(sig, handler)

    def begin_shutdown(self) -> None:
        if self.service.admission.closing:
            return
        self.service.admission.closing = True
        grace = self.service.settings.shutdown_grace_seconds
        margin = min(1.0, grace / 5)  # answer before uvicorn cancels the request tasks itself
        asyncio.get_running_loop().call_later(grace - margin, self.cancel_jobs)

    def cancel_jobs(self) -> None:
        if self.service.jobs:
            log.warning("shutdown: cancelling %d label jobs still running", len(self.service.jobs))
        for task in list(self.service.jobs):
            task.cancel()

    async def shutdown(self) -> None:
        """At lifespan shutdown: wait for jobs of clients that left, then close the engine."""
        admission, grace = self.service.admission, self.service.settings.shutdown_grace_seconds
        if not await admission.drain(grace):
            log.warning("shutdown: %d label jobs still running after %g s", admission.active, grace)
            self.cancel_jobs()
        self.service.bodies.close()
        with contextlib.suppress(Exception):
            await self.service.engine.aclose()  # each cached judgment is one committed transaction
        for cheap in self.service.cheap_engines.values():
            with contextlib.suppress(Exception):
                await cheap.aclose()


_TOKEN_QUERY = re.compile(r"([?&](?:token|sig)=)[^&\s\"]*", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Hide ``token=``/``sig=`` query values in uvicorn's access log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_QUERY.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args
            )
        elif isinstance(record.msg, str):
            record.msg = _TOKEN_QUERY.sub(r"\1[redacted]", record.msg)
        return True
