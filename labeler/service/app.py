"""The HTTP labeling service: ``python -m labeler.app --host 127.0.0.1 --port 8080 --judge metrics``.

A thin FastAPI layer over the same :class:`labeler.engine.Engine` as the batch CLI (same cache,
same swap voting, same probabilities). ``POST /label`` labels one pair given by paths inside
``--media-root`` or as inline base64 frames; ``POST /label/batch`` streams NDJSON lines as pairs
complete; ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus) and ``/docs`` (OpenAPI) come with it.
For uvicorn/gunicorn users: ``uvicorn --factory labeler.app:create_app`` (settings from
``DENSEPREF_*`` variables). Safety rules (auth, paths, limits, errors) live in labeler.service.security.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from labeler import __version__, video
from labeler.cli_options import UsageError, add_engine_arguments, add_judge_arguments, engine_from_args
from labeler.engine import BudgetExceeded, Engine
from labeler.schemas import DensePreferenceRecord, JudgeError, ManifestEntry
from labeler.service.annotate.routes import router as annotate_router
from labeler.service.media_stream import router as media_router
from labeler.service.metrics import CONTENT_TYPE_LATEST, MetricsMiddleware, ServiceMetrics
from labeler.service.models import (
    ERROR_RESPONSES,
    HealthResponse,
    LabelBatchRequest,
    LabelByPathRequest,
    LabelInlineRequest,
    LabelRequest,
    LabelResponse,
    ReadyResponse,
)
from labeler.service.security import (
    Admission,
    BodySizeLimit,
    ServiceError,
    decode_inline_frames,
    install_error_handlers,
    probe_media,
    require_token,
    resolve_media_path,
)
from labeler.service.settings import ServiceSettings

__all__ = ["LabelService", "create_app", "main"]

log = logging.getLogger("labeler.app")
READY_TIMEOUT_S = 5.0


def _engine_error(exc: Exception, media_root: Path | None) -> ServiceError:
    """The HTTP answer to an engine failure; server paths are shown relative to the media root."""
    message = str(exc)
    if media_root is not None:
        message = message.replace(str(media_root.resolve()) + "/", "")
    if isinstance(exc, video.VideoMismatchError):
        return ServiceError(400, "VideoMismatch", message)
    if isinstance(exc, video.VideoError):
        return ServiceError(400, "InvalidVideo", message)
    if isinstance(exc, JudgeError):  # already retried by the engine: the upstream reason goes back
        return ServiceError(502, type(exc).__name__, message)
    if isinstance(exc, BudgetExceeded):
        return ServiceError(503, "BudgetExceeded", message)
    if isinstance(exc, ValidationError) and exc.title == "Judgment":  # the judge answered nonsense
        return ServiceError(502, "InvalidJudgment", f"the judge gave an invalid answer: {message}")
    if isinstance(exc, ValidationError):  # the inputs cannot form a valid record (e.g. absurd timing)
        return ServiceError(422, "InvalidRecord", message)
    if isinstance(exc, ValueError):
        return ServiceError(400, "InvalidInput", message)
    raise exc


class LabelService:
    """The serving logic behind the routes: admission, validation under the limits, the engine."""

    def __init__(self, settings: ServiceSettings, engine: Engine):
        self.settings = settings
        self.engine = engine
        self.admission = Admission(settings.max_queue, settings.retry_after_seconds)

    # -------------------------------------------------------------- by path

    def _probe(self, path: str) -> video.VideoInfo:
        # The engine's probe, remembered per file identity: a repeated request opens no video.
        return self.engine.video_meta(path)[0]

    def _entry(self, req: LabelByPathRequest) -> ManifestEntry:
        """Resolve and probe the paths of a request (blocking: call in a thread)."""
        root = self.settings.media_root
        if root is None:
            raise ServiceError(
                400, "PathFormDisabled", "the by-path form needs the service started with --media-root"
            )
        paths = {"video_a": req.video_a, "video_b": req.video_b}
        if req.reference is not None:
            paths["reference"] = req.reference
        real = {name: resolve_media_path(root, rel, field=name) for name, rel in paths.items()}
        infos = {
            name: probe_media(p, field=name, max_seconds=self.settings.max_video_seconds, probe=self._probe)
            for name, p in real.items()
        }
        seconds = req.segment_seconds or self.engine.config.segment_seconds
        info = infos["video_a"]
        n_segments = len(video.plan_segments(info.num_frames, info.fps, seconds))
        if n_segments > self.settings.max_segments:
            raise ServiceError(
                400,
                "TooManySegments",
                f"segment_seconds: {seconds:g} s cuts a {info.duration:.1f} s video into {n_segments} segments, "
                f"over the limit of {self.settings.max_segments}",
            )
        return ManifestEntry(
            pair_id=req.effective_pair_id(),
            prompt=req.prompt,
            video_a=str(real["video_a"]),
            video_b=str(real["video_b"]),
            reference=str(real["reference"]) if "reference" in real else None,
            segment_seconds=req.segment_seconds,
        )

    async def _label_path_admitted(self, req: LabelByPathRequest) -> DensePreferenceRecord:
        entry = await asyncio.to_thread(self._entry, req)
        try:
            record = await self.engine.label_pair(entry)
        except Exception as exc:
            raise _engine_error(exc, self.settings.media_root) from None
        # Echo the caller's relative paths: absolute server paths stay private.
        return record.model_copy(
            update={"video_a": req.video_a, "video_b": req.video_b, "reference": req.reference}
        )

    async def label_by_path(self, req: LabelByPathRequest) -> DensePreferenceRecord:
        with self.admission.slot():
            return await self._label_path_admitted(req)

    # -------------------------------------------------------------- inline

    async def label_inline(self, req: LabelInlineRequest) -> DensePreferenceRecord:
        with self.admission.slot():
            segments = await asyncio.to_thread(decode_inline_frames, req, self.settings)
            try:
                return await self.engine.label_frames(req.prompt, segments, pair_id=req.pair_id or "inline")
            except Exception as exc:
                raise _engine_error(exc, None) from None

    # -------------------------------------------------------------- batch

    async def _batch_line(self, req: LabelByPathRequest) -> dict[str, Any]:
        try:
            record = await self._label_path_admitted(req)
        except Exception as exc:  # one pair's failure must not cut the stream of the others
            if not isinstance(exc, ServiceError):
                log.exception("batch pair %s failed unexpectedly", req.effective_pair_id())
                exc = ServiceError(500, "InternalError", f"internal error ({type(exc).__name__})")
            error = {"type": exc.error_type, "message": exc.message}
            return {"pair_id": req.effective_pair_id(), "status": exc.status_code, "error": error}
        return record.model_dump(mode="json")

    def start_batch(self, batch: LabelBatchRequest) -> list[asyncio.Task[dict[str, Any]]]:
        """Admit all pairs at once (or none: 503), then label them concurrently; each pair frees
        its slot when done, so a client that goes away cannot leak capacity."""
        if self.settings.media_root is None:
            raise ServiceError(
                400, "PathFormDisabled", "the by-path form needs the service started with --media-root"
            )
        limit = min(self.settings.max_batch_pairs, self.settings.max_queue)
        if len(batch.pairs) > limit:
            raise ServiceError(
                400, "TooManyPairs", f"pairs: {len(batch.pairs)} over the limit of {limit} per batch"
            )
        self.admission.acquire(len(batch.pairs))
        tasks = [asyncio.create_task(self._batch_line(p)) for p in batch.pairs]
        for task in tasks:  # a done callback runs even for a task cancelled before it started
            task.add_done_callback(lambda _t: self.admission.release())
        return tasks

    # -------------------------------------------------------------- readiness

    async def ready(self) -> tuple[bool, str | None]:
        if self.admission.closing:
            return False, "shutting down"
        try:
            ok = await asyncio.wait_for(self.engine.judge.ready(), READY_TIMEOUT_S)
        except asyncio.TimeoutError:
            return False, f"the judge did not answer within {READY_TIMEOUT_S:g} s"
        except Exception as exc:  # a failing readiness probe means "not ready", never a 500
            return False, f"readiness check failed: {exc}"
        return bool(ok), None if ok else "the judge endpoint is not reachable"


async def _ndjson(tasks: list[asyncio.Task[dict[str, Any]]]) -> AsyncIterator[bytes]:
    try:
        for next_done in asyncio.as_completed(tasks):
            yield (json.dumps(await next_done) + "\n").encode()
    finally:  # the client went away: stop the pairs still running
        for task in tasks:
            task.cancel()


# ------------------------------------------------------------------ the app


def build_engine_parser(add_help: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=add_help, allow_abbrev=False)
    add_judge_arguments(parser)
    add_engine_arguments(parser)
    return parser


def engine_from_settings(settings: ServiceSettings) -> Engine:
    try:
        args = build_engine_parser().parse_args(settings.engine_args)
        return engine_from_args(args)
    except (SystemExit, UsageError) as exc:  # argparse exits on bad options; a factory must raise
        raise ValueError(f"invalid engine_args {settings.engine_args}: {exc}") from None


def create_app(settings: ServiceSettings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """The FastAPI app. ``settings`` default to ``ServiceSettings.from_env()``; ``engine`` (for
    tests and embedding) defaults to one built from ``settings.engine_args``, closed at shutdown."""
    settings = settings or ServiceSettings.from_env()
    engine = engine or engine_from_settings(settings)
    service = LabelService(settings, engine)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        # uvicorn has already let in-flight requests finish; wait for jobs of clients that left.
        if not await service.admission.drain(settings.shutdown_grace_seconds):
            log.warning(
                "shutdown: %d label jobs still running after %g s",
                service.admission.active,
                settings.shutdown_grace_seconds,
            )
        await engine.aclose()  # closes the judgment cache: every entry is one committed transaction

    app = FastAPI(
        title="densepref labeling service",
        version=__version__,
        lifespan=lifespan,
        description="Segment-level preference labels for aligned video pairs (DESIGN §2.3).",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the token
    )
    app.state.settings = settings
    app.state.service = service
    metrics = ServiceMetrics(lambda: engine.stats, lambda: service.admission.active)
    install_error_handlers(app)

    open_routes = APIRouter()
    routes = APIRouter(dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)

    @open_routes.get("/healthz", response_model=HealthResponse, tags=["ops"])
    async def healthz() -> HealthResponse:
        """Liveness: the process answers (no auth)."""
        return HealthResponse()

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

    @routes.post("/label", response_model=LabelResponse, tags=["label"])
    async def label(body: Annotated[LabelRequest, Body()]) -> DensePreferenceRecord:
        """Label one pair: by paths inside the media root, or inline base64 frames per segment."""
        if isinstance(body, LabelInlineRequest):
            return await service.label_inline(body)
        return await service.label_by_path(body)

    @routes.post(
        "/label/batch",
        tags=["label"],
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"application/x-ndjson": {}},
                "description": "One JSON line per pair, as each completes: the record, or {pair_id, status, error}.",
            }
        },
    )
    async def label_batch(body: LabelBatchRequest) -> StreamingResponse:
        """Label several by-path pairs; one NDJSON line per pair in completion order."""
        return StreamingResponse(_ndjson(service.start_batch(body)), media_type="application/x-ndjson")

    @routes.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @routes.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=str(request.url_for("openapi")), title=app.title)

    app.include_router(open_routes)
    app.include_router(routes)
    # ---- other routers mount here (they reuse require_token and the error handlers) ----
    # The annotation page and /media check auth themselves: a browser navigating to the page or a
    # <video> element cannot send the bearer header (see labeler.service.annotate.routes, labeler.service.media_stream).
    app.include_router(annotate_router)
    app.include_router(media_router)
    # ---- end of mounted routers ----
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it times 413s too
    return app


# ------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m labeler.app",
        parents=[build_engine_parser()],
        allow_abbrev=False,
        description="Serve dense preference labeling over HTTP (POST /label, /label/batch, /metrics, /docs). "
        "Every setting can also come from DENSEPREF_<NAME> environment variables; auth is on when "
        "DENSEPREF_API_TOKEN is set. One worker process: to scale, run several behind a load balancer "
        "with the same --cache-dir (the judgment cache is safe to share between processes).",
    )
    _add_service_arguments(parser)
    parser.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    return parser


def _add_service_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("service and limits")
    for name, field in ServiceSettings.model_fields.items():
        if name in ("api_token", "engine_args"):
            continue  # the token only from the environment (not visible in `ps`); engine options above
        kind = field.annotation if field.annotation in (int, float) else Path if name == "media_root" else str
        g.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=None,
            help=f"{field.description} (default: {field.default if field.default is not None else 'none'})",
        )


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # validates everything, prints --help
    service_only = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_service_arguments(service_only)
    service_only.add_argument("--log-level")
    _, engine_args = service_only.parse_known_args(argv)
    overrides = {k: getattr(args, k) for k in ServiceSettings.model_fields if hasattr(args, k)}
    try:
        settings = ServiceSettings.from_env(**overrides, engine_args=engine_args or None)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if settings.media_root is not None and not settings.media_root.is_dir():
        raise SystemExit(f"--media-root {settings.media_root} is not a folder")
    import uvicorn

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )
