"""The service's routes, as module-level routers (FastAPI's larger-application layout): each
handler finds what it needs on ``request.app.state`` (``service``: the :class:`LabelService`,
``metrics``: the :class:`ServiceMetrics`), set by ``create_app``; nothing is captured in closures.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from labeler.schemas import DensePreferenceRecord
from labeler.service.auth import require_json, require_token
from labeler.service.body import body_schema
from labeler.service.errors import ERROR_RESPONSES
from labeler.service.lifecycle import label_until_disconnect, ndjson_lines
from labeler.service.metrics import CONTENT_TYPE_LATEST, ServiceMetrics
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

__all__ = ["COMPONENTS", "docs_router", "install_openapi", "label_router", "open_router", "ops_router"]

#: Schemas of the bodies parsed by hand (not by FastAPI), joined to the OpenAPI document.
COMPONENTS: dict[str, Any] = {}


def _service(request: Request) -> LabelService:
    service: LabelService = request.app.state.service
    return service


# --------------------------------------------------------------------------- no auth

open_router = APIRouter()


@open_router.get("/healthz", response_model=HealthResponse, tags=["ops"])
async def healthz() -> HealthResponse:
    """Liveness: the process answers (no auth)."""
    return HealthResponse()


# --------------------------------------------------------------------------- ops

ops_router = APIRouter(dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)


@ops_router.get("/readyz", response_model=ReadyResponse, tags=["ops"])
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the judge is loaded and its endpoint answers (503 otherwise)."""
    service = _service(request)
    ok, detail = await service.ready()
    body = ReadyResponse(
        status="ready" if ok else "not ready",
        judge=service.engine.judge.name,
        model=service.engine.judge.model,
        detail=detail,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@ops_router.get("/metrics", tags=["ops"], response_class=Response)
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus text format: requests, latency, cache hits, judge errors, jobs in flight."""
    metrics: ServiceMetrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


# --------------------------------------------------------------------------- labeling

label_router = APIRouter(
    dependencies=[Depends(require_token), Depends(require_json)], responses=ERROR_RESPONSES
)


@label_router.post(
    "/label",
    response_model=LabelResponse,
    tags=["label"],
    openapi_extra=body_schema(LABEL_REQUEST, COMPONENTS),
)
async def label(request: Request) -> DensePreferenceRecord:
    """Label one pair: by paths inside the media root, or inline base64 frames per segment.
    A client that disconnects cancels its job."""
    service = _service(request)
    body = await service.bodies.parse(request, "label")
    if isinstance(body, LabelInlineRequest):
        job = service.label_inline(body)
    else:
        assert isinstance(body, LabelByPathRequest)
        job = service.label_by_path(body)
    return await label_until_disconnect(request, job)


@label_router.post(
    "/label/batch",
    tags=["label"],
    response_class=StreamingResponse,
    openapi_extra=body_schema(LABEL_BATCH_REQUEST, COMPONENTS),
    responses={
        200: {
            "content": {"application/x-ndjson": {}},
            "description": "One JSON line per pair, as each completes: the record, or {pair_id, status, error}.",
        }
    },
)
async def label_batch(request: Request) -> StreamingResponse:
    """Label several by-path pairs; one NDJSON line per pair in completion order."""
    service = _service(request)
    require_media_root(service.settings.media_root, "pairs")  # 400 before the body is parsed
    body = await service.bodies.parse(request, "batch")
    assert isinstance(body, LabelBatchRequest)
    return StreamingResponse(ndjson_lines(service.start_batch(body)), media_type="application/x-ndjson")


# --------------------------------------------------------------------------- docs (behind the token)

docs_router = APIRouter(dependencies=[Depends(require_token)])


def install_openapi(app: FastAPI) -> None:
    """The app's OpenAPI document, with the hand-parsed bodies' schemas (:data:`COMPONENTS`)."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            spec.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]


@docs_router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@docs_router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=str(request.url_for("openapi")), title=request.app.title)
