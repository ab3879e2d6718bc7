"""The human annotation page and its API, served by ``labeler.app`` (``include_router(router)``).

    GET  /annotate?manifest=NAME[&blind=1]     the page (static HTML + JS in labeler/service/annotate/static)
    GET  /annotate/api/pairs?manifest=NAME&annotator=X[&blind=1][&labels=L&order=least-confident]
         [&preannotations=1][&team=a,b,c&overlap=F]
                                               pairs, segments, signed media URLs, saved answers,
                                               the rubric (review queue options: annotate/queue.py)
    POST /annotations                          {manifest, pair_id, segment, label, annotator, note?}
    POST /annotations/export                   {manifest, annotator} -> writes the human JSONL
                                               (409 while no pair is finished)
    GET  /annotations/export?manifest=NAME&annotator=X
                                               downloads the last export

``NAME`` is a manifest JSONL path relative to ``--media-root``, under the same path rules as
``/label`` and ``/media``. Answers are always in the pair's true A/B terms: in blind mode the page
shows a per-(annotator, pair) random side order and maps the answer back before posting.

Auth, when the service has a token: the API needs ``Authorization: Bearer``. A browser cannot send
that header when it navigates, so the page also accepts ``?token=`` once: it answers with an
HttpOnly, SameSite=Strict cookie holding a value derived from the token (never the token), which
lets a reload load the page again; the page's script keeps the token in sessionStorage for its API
calls and removes it from the address bar. The static script and style sheet are public (they are
the package's own files and hold no data).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from labeler.service.annotate import queue
from labeler.service.annotate.store import (
    AnnotationError,
    AnnotationStore,
    Answer,
    ManifestPlan,
    PlannedPair,
    check_annotator,
    export_annotations,
    manifest_key,
    plan_manifest,
)
from labeler.service.auth import (
    SESSION_COOKIE,
    check_bearer,
    check_session,
    require_json,
    require_token_or_session,
    session_value,
)
from labeler.service.errors import ERROR_RESPONSES, ServiceError
from labeler.service.media_stream import media_url
from labeler.service.paths import private_paths, require_media_root, resolve_media_path

__all__ = ["AnnotationIn", "ExportIn", "blind_swapped", "router"]

# Every route documents the statuses it can answer (400 bad manifest name, 404 no such manifest...).
router = APIRouter(tags=["annotation"], responses=ERROR_RESPONSES)
_AUTH = [Depends(require_token_or_session)]
_AUTH_JSON = [Depends(require_token_or_session), Depends(require_json)]

STATIC_DIR = Path(__file__).with_name("static")
_STATIC_FILES = {
    "annotate.js": "text/javascript",
    "annotate_api.js": "text/javascript",
    "synced_player.js": "text/javascript",
    "annotate.css": "text/css",
}
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    # The first visit carries ?token=: never send that URL on as a Referer.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "media-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}
NOTE_MAX_CHARS = 2000


class AnnotationIn(BaseModel):
    """One answer, in the pair's true A/B terms (the page maps blind-mode sides back)."""

    model_config = ConfigDict(extra="forbid")

    manifest: str = Field(min_length=1, description="Manifest path relative to the media root.")
    pair_id: str = Field(min_length=1)
    segment: StrictInt = Field(ge=0, description="Segment index, from 0.")
    label: Literal["A", "B", "tie"]
    annotator: str
    note: str | None = Field(None, max_length=NOTE_MAX_CHARS)
    blind: StrictBool = Field(
        False, description="The page showed the sides in blind (randomly swapped) order."
    )


class ExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest: str = Field(min_length=1)
    annotator: str


# --------------------------------------------------------------------------- helpers


def _settings(request: Request) -> Any:
    return request.app.state.settings


def _media_root(request: Request) -> Path:
    return require_media_root(_settings(request).media_root, "manifest")


_store_lock = threading.Lock()


def _store(request: Request) -> AnnotationStore:
    """One store per app: its lock must be shared by all requests (they run in worker threads)."""
    state = request.app.state
    with _store_lock:
        store = getattr(state, "annotation_store", None)
        if store is None:
            directory = _settings(request).annotations_dir
            store = AnnotationStore(Path(directory) if directory else _media_root(request) / ".annotations")
            state.annotation_store = store
    return store


def _annotator(name: str) -> str:
    try:
        return check_annotator(name)
    except AnnotationError as exc:
        raise ServiceError(exc.status, "InvalidAnnotation", exc.message) from None


def _plan(request: Request, manifest: str) -> ManifestPlan:
    path = resolve_media_path(_media_root(request), manifest, field="manifest")
    # The service's own engine decides the default segment length, as it does for POST /label.
    seconds = request.app.state.service.engine.config.segment_seconds
    try:
        return plan_manifest(path, manifest, seconds, media_root=_media_root(request))
    except (OSError, UnicodeDecodeError) as exc:
        reason = private_paths(_media_root(request), {path: manifest})(str(exc))
        raise ServiceError(
            400, "InvalidManifest", f"manifest: {manifest!r} cannot be read: {reason}"
        ) from None


def blind_swapped(manifest: str, annotator: str, pair_id: str) -> bool:
    """Blind mode's side order: fixed per (manifest, annotator, pair), so a reload shows the same
    sides, and independent of position in the manifest."""
    digest = hashlib.sha256(f"{manifest}\0{annotator}\0{pair_id}".encode()).digest()
    return bool(digest[0] & 1)


def _media_rel(root: Path, video: Path) -> str:
    """``video``'s path relative to the media root (plan_manifest keeps only videos inside it)."""
    return Path(os.path.realpath(video)).relative_to(os.path.realpath(root)).as_posix()


def _pair_view(
    pair: PlannedPair,
    root: Path,
    token: str | None,
    answers: dict[tuple[str, int], Answer],
    swapped: bool,
) -> dict[str, Any]:
    videos = {
        side: media_url(_media_rel(root, path), token)
        for side, path in (("A", pair.video_a), ("B", pair.video_b))
    }
    saved = {
        str(seg.index): {"label": a.label, "note": a.note}
        for seg in pair.segments
        if (a := answers.get((pair.pair_id, seg.index))) is not None
    }
    return {
        "pair_id": pair.pair_id,
        "prompt": pair.entry.prompt,
        "fps": pair.fps,
        "num_frames": pair.num_frames,
        "duration": pair.num_frames / pair.fps,
        "videos": videos,
        "swapped": swapped,
        "segments": [
            {
                "index": s.index,
                "start_frame": s.start_frame,
                "end_frame": s.end_frame,
                "start_s": s.start_s,
                "end_s": s.end_s,
            }
            for s in pair.segments
        ],
        "answers": saved,
    }


def _shown_path(path: Path, root: Path) -> str:
    """A server path as the page may show it: relative to the media root when inside it (absolute
    server paths stay private), else as the operator configured it (--annotations-dir)."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _pairs_done(plan: ManifestPlan, answers: dict[tuple[str, int], Answer]) -> int:
    return sum(all((p.pair_id, s.index) in answers for s in p.segments) for p in plan.pairs)


# --------------------------------------------------------------------------- page


@router.get("/annotate", response_class=FileResponse, include_in_schema=False)
def annotate_page(request: Request, manifest: Annotated[str, Query(min_length=1)]) -> Response:
    """The annotation page. ``manifest`` is read by the page's script; it is required here so a
    missing one fails at once. A valid ``?token=`` is traded once for an HttpOnly session cookie
    and a redirect to the same URL without it, so the token leaves the address bar and history."""
    token = _settings(request).token()
    if token is not None and "token" in request.query_params:
        if not hmac.compare_digest(request.query_params["token"].encode(), token.encode()):
            raise ServiceError(401, "Unauthorized", "invalid API token")
        query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
        response: Response = RedirectResponse(
            f"{request.url.path}?{query}", status_code=303, headers=_PAGE_HEADERS
        )
        response.set_cookie(
            SESSION_COOKIE,
            session_value(token),
            httponly=True,
            samesite="strict",
            path="/",
            secure=request.url.scheme == "https",
        )
        return response
    if token is not None and not check_session(request, token):
        try:
            check_bearer(request.headers.get("authorization"), token)
        except ServiceError as exc:
            raise ServiceError(
                401, "Unauthorized", f"{exc.message}; open /annotate?manifest=...&token=<token> once"
            ) from None
    return FileResponse(STATIC_DIR / "annotate.html", media_type="text/html", headers=_PAGE_HEADERS)


@router.get("/annotate/static/{name}", include_in_schema=False)
def annotate_static(name: str) -> FileResponse:
    if name not in _STATIC_FILES:
        raise ServiceError(404, "NotFound", f"no static file {name!r}")
    return FileResponse(
        STATIC_DIR / name, media_type=_STATIC_FILES[name], headers={"Cache-Control": "no-cache"}
    )


# --------------------------------------------------------------------------- API


@router.get("/annotate/api/pairs", dependencies=_AUTH)
def annotate_pairs(
    request: Request,
    response: Response,
    manifest: Annotated[str, Query(min_length=1)],
    annotator: str = "",
    blind: bool = False,
    labels: str = "",
    order: queue.Order = "manifest",
    preannotations: bool = False,
    team: str = "",
    overlap: float = 0.0,
) -> dict[str, Any]:
    """Everything the page needs: pairs with segments, media URLs, the annotator's saved answers
    (true A/B terms) and, in blind mode, each pair's side order. The review queue's options
    (``labels``, ``order``, ``preannotations``, ``team``/``overlap``): labeler.service.annotate.queue."""
    # It holds signed media URLs and the annotator's answers: no cache may keep or share it.
    response.headers["Cache-Control"] = "no-store"
    name = _annotator(annotator) if annotator.strip() else ""
    plan = _plan(request, manifest)
    root, token = _media_root(request), _settings(request).token()
    if (order != "manifest" or preannotations) and not labels:
        raise ServiceError(
            422, "InvalidQuery", "order=least-confident and preannotations need labels=<judge labels>"
        )
    judged = queue.read_judge_labels(root, labels) if labels else {}
    chosen = list(plan.pairs)
    if team:
        if not name:
            raise ServiceError(422, "InvalidQuery", "team: give annotator= to get your share of the pairs")
        members = queue.parse_team(team, name, overlap)
        chosen = [p for p in chosen if name in queue.assignees(p.pair_id, members, overlap)]
    answers = _store(request).answers(manifest_key(manifest), name) if name else {}
    pairs = []
    for pair in queue.order_pairs(chosen, judged, order):
        view = _pair_view(pair, root, token, answers, blind and blind_swapped(manifest, name, pair.pair_id))
        if (ref := queue.reference_url(pair, plan.path.parent, root, token)) is not None:
            view["videos"]["ref"] = ref
        if labels:
            view["confidence"] = queue.confidence(judged.get(pair.pair_id), pair)
        if preannotations:
            view["preannotation"] = queue.preannotation(judged.get(pair.pair_id), pair)
        pairs.append(view)
    return {
        "manifest": manifest,
        "annotator": name,
        "blind": blind,
        "order": order,
        "rubric": queue.RUBRIC,
        "pairs": pairs,
        "problems": [
            {"pair_id": p.pair_id, "type": p.type, "message": private_paths(root)(p.message)}
            for p in plan.problems
        ],
        "pairs_done": _pairs_done(plan, answers),
        "pairs_total": len(plan.pairs),
    }


@router.post("/annotations", dependencies=_AUTH_JSON)
def post_annotation(request: Request, body: AnnotationIn) -> dict[str, Any]:
    """Save one answer (the last answer per annotator, pair and segment wins)."""
    annotator = _annotator(body.annotator)
    plan = _plan(request, body.manifest)
    pair = plan.pair(body.pair_id)
    if pair is None:
        raise ServiceError(
            404,
            "UnknownPair",
            f"pair_id: {body.pair_id!r} is not a usable pair of manifest {body.manifest!r}",
        )
    if body.segment >= len(pair.segments):
        raise ServiceError(
            422,
            "InvalidAnnotation",
            f"segment: {body.segment} is out of range; pair {pair.pair_id!r} has segments 0..{len(pair.segments) - 1}",
        )
    note = (body.note or "").strip() or None
    answer = Answer(body.pair_id, body.segment, body.label, annotator, note, body.blind)
    store, key = _store(request), manifest_key(body.manifest)
    store.append(key, answer)
    answers = store.answers(key, annotator)
    return {
        "saved": {
            "pair_id": answer.pair_id,
            "segment": answer.segment,
            "label": answer.label,
            "note": answer.note,
        },
        "pairs_done": _pairs_done(plan, answers),
        "pairs_total": len(plan.pairs),
    }


@router.post("/annotations/export", dependencies=_AUTH_JSON)
def export(request: Request, body: ExportIn) -> dict[str, Any]:
    """Write the annotator's fully answered pairs as dense preference JSONL
    (``<annotations dir>/<manifest>.<annotator>.human.jsonl``); incomplete pairs are listed."""
    annotator = _annotator(body.annotator)
    plan = _plan(request, body.manifest)
    if _pairs_done(plan, _store(request).answers(manifest_key(body.manifest), annotator)) == 0:
        # An empty file would replace a useful earlier export and look like a finished job.
        raise ServiceError(
            409,
            "NothingToExport",
            f"annotator: {annotator!r} has not finished any pair of {body.manifest!r} yet",
        )
    result = export_annotations(plan, _store(request), annotator)
    return {
        "path": _shown_path(result.path, _media_root(request)),
        "records": len(result.written),
        "written": result.written,
        "incomplete": result.incomplete,
    }


@router.get("/annotations/export", dependencies=_AUTH)
def download_export(
    request: Request, manifest: Annotated[str, Query(min_length=1)], annotator: str = ""
) -> Response:
    """The last export of ``annotator`` for ``manifest``, as a JSONL download."""
    name = _annotator(annotator)
    resolve_media_path(_media_root(request), manifest, field="manifest")
    path = _store(request).export_path(manifest_key(manifest), name)
    if not path.is_file():
        raise ServiceError(
            404, "NotExported", f"annotator: nothing exported yet for {name!r}; POST /annotations/export"
        )
    return FileResponse(
        path, media_type="application/x-ndjson", filename=path.name, headers={"Cache-Control": "no-store"}
    )
