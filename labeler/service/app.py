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
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from labeler import __version__
from labeler.cli_options import build_engine_parser, spec_from_argv
from labeler.engine import Engine
from labeler.schemas import DensePreferenceRecord
from labeler.service.annotate.routes import router as annotate_router
from labeler.service.auth import require_token
from labeler.service.body import body_schema
from labeler.service.errors import ERROR_RESPONSES, install_error_handlers
from labeler.service.lifecycle import Lifecycle, RedactTokens, label_until_disconnect, ndjson_lines
from labeler.service.limits import BodyLimits
from labeler.service.media_stream import router as media_router
from labeler.service.metrics import CONTENT_TYPE_LATEST, MetricsMiddleware, ServiceMetrics
from labeler.service.models import (
    LABEL_BATCH_REQUEST,
    LABEL_REQUEST,
    HealthResponse,
    LabelBatchRequest,
    LabelByPathRequest,
    LabelInlineRequest,
    LabelResponse,
    ReadyResponse,
)
from labeler.service.paths import require_media_root
from labeler.service.service import LabelService
from labeler.service.settings import ServiceSettings

__all__ = ["build_engine_parser", "create_app", "engine_from_settings"]  # the parser: labeler.cli_options

log = logging.getLogger("labeler.app")


def engine_from_settings(settings: ServiceSettings) -> Engine:
    """The engine the batch CLI would build from ``settings.engine_args``; ValueError (a
    UsageError) naming the bad option otherwise."""
    return spec_from_argv(list(settings.engine_args)).build()


def _ops_routes(service: LabelService, metrics: ServiceMetrics) -> APIRouter:
    routes = APIRouter(dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)
    engine = service.engine

    @routes.get("/readyz", response_model=ReadyResponse, tags=["ops"])
    async def readyz() -> JSONResponse:
        """Readiness: the judge is loaded and its endpoint answers (503 otherwise)."""
        ok, detail = await service.ready()
        body = ReadyResponse(
            status="ready" if ok else "not ready",
            judge=engine.judge.name,
            model=engine.judge.model,
            detail=detail,
        )
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @routes.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text format: requests, latency, cache hits, judge errors, jobs in flight."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return routes


def _label_routes(service: LabelService, components: dict[str, Any]) -> APIRouter:
    routes = APIRouter(dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)

    @routes.post(
        "/label",
        response_model=LabelResponse,
        tags=["label"],
        openapi_extra=body_schema(LABEL_REQUEST, components),
    )
    async def label(request: Request) -> DensePreferenceRecord:
        """Label one pair: by paths inside the media root, or inline base64 frames per segment.
        A client that disconnects cancels its job."""
        body = await service.bodies.parse(request, "label")
        if isinstance(body, LabelInlineRequest):
            job = service.label_inline(body)
        else:
            assert isinstance(body, LabelByPathRequest)
            job = service.label_by_path(body)
        return await label_until_disconnect(request, job)

    @routes.post(
        "/label/batch",
        tags=["label"],
        response_class=StreamingResponse,
        openapi_extra=body_schema(LABEL_BATCH_REQUEST, components),
        responses={
            200: {
                "content": {"application/x-ndjson": {}},
                "description": "One JSON line per pair, as each completes: the record, or {pair_id, status, error}.",
            }
        },
    )
    async def label_batch(request: Request) -> StreamingResponse:
        """Label several by-path pairs; one NDJSON line per pair in completion order."""
        require_media_root(service.settings.media_root, "pairs")  # 400 before the body is parsed
        body = await service.bodies.parse(request, "batch")
        assert isinstance(body, LabelBatchRequest)
        return StreamingResponse(ndjson_lines(service.start_batch(body)), media_type="application/x-ndjson")

    return routes


def _docs_routes(app: FastAPI, components: dict[str, Any]) -> APIRouter:
    routes = APIRouter(dependencies=[Depends(require_token)])

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            spec.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]  # the bodies parsed by hand join the schema

    @routes.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @routes.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=str(request.url_for("openapi")), title=app.title)

    return routes


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
        openapi_url=None,  # served by _docs_routes, behind the token
    )
    app.state.settings = settings
    app.state.service = service
    metrics = ServiceMetrics(lambda: service.engine.stats, lambda: service.admission.active)
    install_error_handlers(app)
    components: dict[str, Any] = {}
    open_routes = APIRouter()

    @open_routes.get("/healthz", response_model=HealthResponse, tags=["ops"])
    async def healthz() -> HealthResponse:
        """Liveness: the process answers (no auth)."""
        return HealthResponse()

    for router in (
        open_routes,
        _ops_routes(service, metrics),
        _label_routes(service, components),
        _docs_routes(app, components),
        annotate_router,  # the page and /media check auth themselves: browsers send no bearer header
        media_router,
    ):
        app.include_router(router)
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout_seconds)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it times 413s too
    return app
