"""The stand-in's FastAPI app (FastAPI is imported at module level: it resolves the routes' string
annotations against this module's globals)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from labeler.standin.batch_api import _file_object, _now, _parse_multipart, _store_file, run_batch
from labeler.standin.behaviour import StandinConfig, _error
from labeler.standin.state import StandinState

# --------------------------------------------------------------------------- the app

VLLM_NOT_FOUND = {"detail": "Not Found"}  # what vllm serve's FastAPI router answers for /v1/files


def _err(status: int, message: str) -> JSONResponse:
    return JSONResponse(_error(status, message), status_code=status)


def _authorized(state: StandinState, request: Request) -> bool:
    key = state.config.api_key
    return not key or request.headers.get("authorization") == f"Bearer {key}"


def _no_batch_api(state: StandinState) -> JSONResponse | None:
    """The vllm flavour has no Files or Batch API: every such route is an unknown path there."""
    return JSONResponse(VLLM_NOT_FOUND, status_code=404) if state.config.flavour == "vllm" else None


def create_app(config: StandinConfig | None = None) -> FastAPI:
    """The FastAPI app; ``app.state.standin`` is its StandinState. (FastAPI is imported at module
    level because it resolves the routes' string annotations against the module's globals.)"""
    state = StandinState(config or StandinConfig())
    app = FastAPI(title="densepref OpenAI-compatible stand-in")
    app.state.standin = state
    _add_chat_routes(app, state)
    _add_file_routes(app, state)
    _add_file_read_routes(app, state)
    _add_batch_routes(app, state)
    _add_batch_read_routes(app, state)
    _add_control_routes(app, state)
    return app


def _add_chat_routes(app: FastAPI, state: StandinState) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _err(400, "the body is not JSON")
        status, payload, headers = await state.complete(body, request.headers.get("authorization"))
        return JSONResponse(payload, status_code=status, headers=headers)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        if not _authorized(state, request):
            return _err(401, "Incorrect API key provided.")
        names = state.config.models or ["standin-vlm"]
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": n, "object": "model", "created": 0, "owned_by": "standin"} for n in names],
            }
        )


def _route_fault(state: StandinState) -> JSONResponse | None:
    """The next injected status of the polling/download routes (StandinConfig.batch_route_faults)."""
    faults = state.config.batch_route_faults
    if not faults:
        return None
    status = faults.pop(0)
    state.faults_served[f"route {status}"] += 1
    return _err(status, f"injected fault {status}")


def _add_file_routes(app: FastAPI, state: StandinState) -> None:
    @app.get("/v1/files")
    async def list_files(request: Request) -> JSONResponse:
        if (missing := _no_batch_api(state)) is not None:
            return missing
        if not _authorized(state, request):
            return _err(401, "Incorrect API key provided.")
        data = [_file_object(f) for f in state.files.values()]
        return JSONResponse({"object": "list", "data": data, "has_more": False})

    @app.post("/v1/files")
    async def upload_file(request: Request) -> JSONResponse:
        if (missing := _no_batch_api(state)) is not None:
            return missing
        if not _authorized(state, request):
            return _err(401, "Incorrect API key provided.")
        try:
            fields = _parse_multipart(request.headers.get("content-type", ""), await request.body())
        except ValueError as exc:
            return _err(400, str(exc))
        if "file" not in fields:
            return _err(400, "missing the 'file' field")
        purpose = fields.get("purpose", (None, b"batch"))[1].decode()
        filename, content = fields["file"]
        return JSONResponse(_file_object(_store_file(state, content, filename or "upload.jsonl", purpose)))


def _add_file_read_routes(app: FastAPI, state: StandinState) -> None:
    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> JSONResponse:
        if (missing := _no_batch_api(state)) is not None:
            return missing
        record = state.files.get(file_id)
        return JSONResponse(_file_object(record)) if record else _err(404, f"No such File object: {file_id}")

    @app.get("/v1/files/{file_id}/content")
    async def get_file_content(file_id: str) -> Response:
        if (missing := _no_batch_api(state)) is not None:
            return missing
        if (fault := _route_fault(state)) is not None:
            return fault
        record = state.files.get(file_id)
        if record is None:
            return _err(404, f"No such File object: {file_id}")
        return Response(record["content"], media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> JSONResponse:
        """OpenAI's DeleteFileResponse: ``{"id", "object": "file", "deleted": true}``."""
        if (missing := _no_batch_api(state)) is not None:
            return missing
        if state.files.pop(file_id, None) is None:
            return _err(404, f"No such File object: {file_id}")
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})


def _new_batch(body: dict[str, Any]) -> dict[str, Any]:
    now = _now()
    return {
        "id": "batch_" + uuid.uuid4().hex[:24], "object": "batch", "endpoint": body["endpoint"],
        "errors": None, "input_file_id": body["input_file_id"], "completion_window": "24h",
        "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
        "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
        "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata"),
    }  # fmt: skip


def _add_batch_routes(app: FastAPI, state: StandinState) -> None:
    tasks: set[asyncio.Task[None]] = set()

    @app.post("/v1/batches")
    async def create_batch(request: Request) -> JSONResponse:
        if (missing := _no_batch_api(state)) is not None:
            return missing
        if not _authorized(state, request):
            return _err(401, "Incorrect API key provided.")
        body = await request.json()
        if body.get("input_file_id") not in state.files:
            return _err(400, f"unknown input_file_id {body.get('input_file_id')!r}")
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return _err(400, "endpoint must be /v1/chat/completions and completion_window 24h")
        batch = _new_batch(body)
        state.batches[batch["id"]] = batch
        task = asyncio.create_task(run_batch(state, batch["id"]))
        tasks.add(task)  # keep a reference until it finishes
        task.add_done_callback(tasks.discard)
        return JSONResponse(batch)


def _add_batch_read_routes(app: FastAPI, state: StandinState) -> None:
    @app.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str) -> JSONResponse:
        if (missing := _no_batch_api(state)) is not None:
            return missing
        if (fault := _route_fault(state)) is not None:
            return fault
        batch = state.batches.get(batch_id)
        return JSONResponse(batch) if batch else _err(404, f"No such batch: {batch_id}")

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> JSONResponse:
        if (missing := _no_batch_api(state)) is not None:
            return missing
        batch = state.batches.get(batch_id)
        if batch is None:
            return _err(404, f"No such batch: {batch_id}")
        if batch["status"] in ("validating", "in_progress"):
            batch.update(status="cancelling", cancelling_at=_now())
        return JSONResponse(batch)


def _add_control_routes(app: FastAPI, state: StandinState) -> None:
    @app.get("/_stats")
    async def stats() -> JSONResponse:
        return JSONResponse(state.stats())

    @app.get("/_requests")
    async def recent_requests(limit: int = 50) -> JSONResponse:
        return JSONResponse(list(state.log)[-limit:])

    @app.post("/_control")
    async def control(request: Request) -> JSONResponse:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of settings")
            state.control(changes)
        except (ValueError, ValidationError) as exc:  # ValidationError is a ValueError in pydantic 2
            return JSONResponse({"detail": str(exc)}, status_code=422)
        return JSONResponse(state.stats())
