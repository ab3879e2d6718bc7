"""The HTTP labeling service: ``python -m labeler.app --host 127.0.0.1 --port 8080 --judge metrics``.

A thin FastAPI layer over the same :class:`labeler.engine.Engine` as the batch CLI (same cache,
same swap voting, same probabilities). ``POST /label`` labels one pair given by paths inside
``--media-root`` or as inline base64 frames; ``POST /label/batch`` streams NDJSON lines as pairs
complete; ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus) and ``/docs`` (OpenAPI) come with it.
For uvicorn/gunicorn users: ``uvicorn --factory labeler.app:create_app`` (settings from
``DENSEPREF_*`` variables). The rules live beside it: errors.py (the error table), auth.py,
paths.py, limits.py, body.py (request parsing), service.py (the serving logic), cli.py.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from labeler import __version__
from labeler.cli_options import build_engine_parser, spec_from_argv
from labeler.engine import Engine
from labeler.service.annotate.routes import router as annotate_router
from labeler.service.errors import install_error_handlers
from labeler.service.lifecycle import Lifecycle, RedactTokens
from labeler.service.limits import BodyLimits
from labeler.service.media_stream import router as media_router
from labeler.service.metrics import MetricsMiddleware, ServiceMetrics
from labeler.service.routes import docs_router, install_openapi, label_router, open_router, ops_router
from labeler.service.service import LabelService
from labeler.service.settings import ServiceSettings

__all__ = ["build_engine_parser", "create_app", "engine_from_settings"]  # the parser: labeler.cli_options

log = logging.getLogger("labeler.app")


def engine_from_settings(settings: ServiceSettings) -> Engine:
    """The engine the batch CLI would build from ``settings.engine_args``; ValueError (a
    UsageError) naming the bad option otherwise."""
    return spec_from_argv(list(settings.engine_args)).build()


def create_app(settings: ServiceSettings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """The FastAPI app. ``settings`` default to ``ServiceSettings.from_env()``; ``engine`` (for
    tests and embedding) defaults to one built from ``settings.engine_args``, closed at shutdown."""
    settings = settings or ServiceSettings.from_env()
    service = LabelService(settings, engine or engine_from_settings(settings))
    lifecycle = Lifecycle(service)
    if settings.token() is None:
        log.warning(
            "AUTH IS OFF: %s is not set; every client can label and read media", "DENSEPREF_API_TOKEN"
        )
    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access_log.filters):
        access_log.addFilter(RedactTokens())

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        lifecycle.watch_signals()
        yield
        await lifecycle.shutdown()

    app = FastAPI(
        title="densepref labeling service",
        version=__version__,
        lifespan=lifespan,
        description="Segment-level preference labels for aligned video pairs (docs/contracts.md).",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by routes.docs_router, behind the token
    )
    app.state.settings = settings
    app.state.service = service
    metrics = ServiceMetrics(lambda: service.engine.stats, lambda: service.admission.active)
    app.state.metrics = metrics
    install_error_handlers(app)
    install_openapi(app)  # the bodies parsed by hand join the schema
    for router in (
        open_router,
        ops_router,
        label_router,
        docs_router,
        annotate_router,  # the page and /media check auth themselves: browsers send no bearer header
        media_router,
    ):
        app.include_router(router)
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout_seconds)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it times 413s too
    return app
