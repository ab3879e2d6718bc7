"""A real, local OpenAI-compatible server for tests and benchmarks (no model, no network).

It speaks enough of the API for the official ``openai`` client: ``POST /v1/chat/completions``
(with ``usage`` and, when asked, ``logprobs``), ``GET /v1/models``, and the Batch API
(``/v1/files``, ``/v1/batches``). What it answers is scripted:

- ``policy`` — "hash": a deterministic label from a hash of the request's images (the same
  images always get the same answer, re-asks included); "first"/"second": always prefers the video
  shown first/second (pure position bias); "tie"; "garbage": prose without JSON; "sharpness": decodes
  the frames and prefers the side with the higher mean Laplacian variance (a crude but real judge).
- Layout rule for "sharpness": a request whose images carry a bright vertical stripe at their exact
  centre (labeler.images.side_by_side's gap) is 'side-by-side' and each image is split at the stripe
  into first | second; otherwise it is 'separate' and the first half of the images is the first video.
- ``faults`` — a queue applied to the next requests, one each: ``{"status": 429, "retry_after": 0.05}``,
  ``{"status": 500}``, ``{"hang": 5.0}`` (sleep before answering), ``{"garbage": true}``; ``rules`` —
  per-content faults applied every time: ``{"match": "text in the prompt", "status": 500}`` or
  ``{"image_hash": image_digest(urls), "status": 500}`` (one segment's images; the log shows the hash).
- ``latency_ms`` per request and ``max_concurrency`` (requests beyond it queue, like a GPU server).
- ``supports_logprobs`` / ``supports_response_format`` = False make it reject those parameters with
  a 400, like some real endpoints; ``api_key`` makes it demand that bearer key (401 otherwise);
  ``models`` restricts the model names it knows (404 otherwise).

Counters (``GET /_stats``): requests, answers per canonical body hash (so a test can assert that no
request was answered twice), faults served, the highest concurrency seen. ``POST /_control``
changes any setting at run time (``reset: true`` also clears counters, log, faults and rules);
``GET /_requests`` returns recent request bodies with images replaced by their hashes.
``usage.prompt_tokens`` uses labeler.pricing.chat_input_tokens, the judges' own estimator.

Run it in-process with ``StandinServer`` or as ``python -m labeler.standin --port 0`` (prints its URL).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["StandinConfig", "StandinServer", "create_app", "main", "start_standin_process"]

Policy = Literal["hash", "first", "second", "tie", "garbage", "sharpness"]
GARBAGE = "Both clips look rather nice to me; it is hard to say which one I would pick, honestly."
_LABELS = ("A", "B", "tie")


class StandinConfig(BaseModel):
    """Run-time settings; ``POST /_control`` accepts any subset of them (unknown keys are a 422)."""

    model_config = ConfigDict(extra="forbid")

    policy: Policy = "hash"
    latency_ms: float = 0.0
    max_concurrency: int = 64
    logprobs: bool = True
    supports_logprobs: bool = True
    supports_response_format: bool = True
    api_key: str | None = None
    models: list[str] = []
    sharpness_margin: float = 0.05
    batch_delay_s: float = 0.05
    faults: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []


# --------------------------------------------------------------------------- request analysis


def canonical_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def image_digest(image_urls: list[str]) -> str:
    """What ``{"image_hash": ...}`` rules match: a hash of all the request's image URLs, in order."""
    return hashlib.sha256("".join(image_urls).encode()).hexdigest()[:16]


def _parts(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(texts, image URLs) of every message, in order."""
    texts, images = [], []
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                images.append(str((part.get("image_url") or {}).get("url", "")))
    return texts, images


def _sanitize(body: dict[str, Any]) -> dict[str, Any]:
    """The body with every data URI replaced by a short hash (for the request log)."""

    def fix(obj: Any) -> Any:
        if isinstance(obj, str) and obj.startswith("data:"):
            return "<image " + hashlib.sha256(obj.encode()).hexdigest()[:12] + ">"
        if isinstance(obj, list):
            return [fix(x) for x in obj]
        if isinstance(obj, dict):
            return {k: fix(v) for k, v in obj.items()}
        return obj

    return fix(body)


def _sharpness(image: np.ndarray) -> float:
    g = image.astype(np.float32).mean(axis=2)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(lap.var())


def _split_composite(image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(left, right) of a side-by-side composite, found by its bright centre stripe; else None."""
    width = image.shape[1]
    bright = image.min(axis=(0, 2)) >= 200  # JPEG ringing keeps the white stripe above ~200
    centre = width // 2
    if width < 8 or not bright[centre - 1 : centre + 1].all():
        return None
    left, right = centre - 1, centre
    while left > 0 and bright[left - 1]:
        left -= 1
    while right < width - 1 and bright[right + 1]:
        right += 1
    if right - left + 1 < 4 or left < 2 or right > width - 3:
        return None
    return image[:, :left], image[:, right + 1 :]


def sharpness_scores(image_urls: list[str]) -> tuple[float, float, str]:
    """Mean Laplacian variance of the first and second video's frames, and the detected layout."""
    from labeler.images import data_uri_bytes, decode_image

    images = [decode_image(data_uri_bytes(u), max_pixels=4096 * 4096) for u in image_urls]
    if not images:
        raise ValueError("the sharpness policy needs images")
    halves = [_split_composite(img) for img in images]
    if all(h is not None for h in halves):
        first = [h[0] for h in halves if h is not None]
        second = [h[1] for h in halves if h is not None]
        layout = "side-by-side"
    else:
        if len(images) % 2:
            raise ValueError(f"{len(images)} separate images cannot be split into two videos")
        first, second, layout = images[: len(images) // 2], images[len(images) // 2 :], "separate"
    return (
        float(np.mean([_sharpness(i) for i in first])),
        float(np.mean([_sharpness(i) for i in second])),
        layout,
    )


def _softmax(logits: dict[str, float]) -> dict[str, float]:
    top = max(logits.values())
    exp = {k: math.exp(v - top) for k, v in logits.items()}
    total = sum(exp.values())
    return {k: v / total for k, v in exp.items()}


def decide(policy: str, image_urls: list[str], margin: float = 0.05) -> tuple[dict[str, float], str]:
    """(label probabilities, rationale) under a policy; the label is the most probable one."""
    if policy == "first":
        return {"A": 0.9, "B": 0.02, "tie": 0.08}, "Video A looks cleaner to me."
    if policy == "second":
        return {"A": 0.02, "B": 0.9, "tie": 0.08}, "Video B looks cleaner to me."
    if policy == "tie":
        return {"A": 0.1, "B": 0.1, "tie": 0.8}, "Both videos show similar artifacts."
    if policy == "sharpness":
        s1, s2, layout = sharpness_scores(image_urls)
        rel = (s1 - s2) / max(s1, s2, 1e-9)
        probs = _softmax({"A": rel / margin, "B": -rel / margin, "tie": 1.0})
        return probs, f"Sharpness {s1:.1f} vs {s2:.1f} ({layout} layout)."
    digest = int(hashlib.sha256("".join(image_urls).encode()).hexdigest(), 16)
    order = [_LABELS[(digest + i) % 3] for i in range(3)]
    top = 0.5 + (digest >> 8) % 45 / 100  # 0.50 .. 0.94
    probs = {order[0]: top, order[1]: (1 - top) * 0.7, order[2]: (1 - top) * 0.3}
    return probs, f"Deterministic answer {digest % 997} for these frames."


def answer_tokens(rationale: str, label: str) -> list[str]:
    """The answer JSON split the way BPE tokenizers split it, the label value its own token."""
    words = re.findall(r"\s*\S+", json.dumps(rationale)[1:-1])
    return ['{"', "rationale", '":', ' "', *words, '",', ' "', "label", '":', ' "', label, '"}']


def _logprob_entry(token: str, logprob: float, alternatives: list[tuple[str, float]]) -> dict[str, Any]:
    def one(tok: str, lp: float) -> dict[str, Any]:
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode())}

    return {**one(token, logprob), "top_logprobs": [one(t, lp) for t, lp in alternatives]}


def build_completion(
    model: str,
    content: str,
    tokens: list[str],
    probs: dict[str, float] | None,
    top: int | None,
    prompt_tokens: int,
) -> dict[str, Any]:
    """A chat.completion object; ``logprobs`` when ``top`` is not None."""
    logprobs = None
    if top is not None:
        entries = []
        for tok in tokens:
            if probs is not None and tok in probs and entries and entries[-1]["token"] == ' "':
                ranked = sorted(probs.items(), key=lambda kv: -kv[1])
                alts = [(k, math.log(max(v, 1e-12))) for k, v in ranked][:top]
                entries.append(_logprob_entry(tok, math.log(max(probs[tok], 1e-12)), alts))
            else:
                entries.append(_logprob_entry(tok, -0.001, [(tok, -0.001)][:top]))
        logprobs = {"content": entries, "refusal": None}
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": logprobs,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        },
    }


def _error(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code or str(status)}}


# --------------------------------------------------------------------------- server state


class StandinState:
    """Settings, fault queue, counters, and the Batch API's files and batches."""

    def __init__(self, config: StandinConfig) -> None:
        self.config = config.model_copy(update={"faults": [], "rules": list(config.rules)})
        self.faults: deque[dict[str, Any]] = deque(config.faults)
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_size = 0
        self.reset_counters()

    def reset_counters(self) -> None:
        self.requests_total = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.by_status: Counter[str] = Counter()
        self.requests_by_hash: Counter[str] = Counter()
        self.answered_by_hash: Counter[str] = Counter()
        self.faults_served: Counter[str] = Counter()
        self.log: deque[dict[str, Any]] = deque(maxlen=500)

    @property
    def semaphore(self) -> asyncio.Semaphore:
        # Made lazily inside the server's loop; replaced when max_concurrency changes (requests
        # holding the old one finish normally).
        if self._semaphore is None or self._semaphore_size != self.config.max_concurrency:
            self._semaphore = asyncio.Semaphore(max(1, self.config.max_concurrency))
            self._semaphore_size = self.config.max_concurrency
        return self._semaphore

    def control(self, changes: dict[str, Any]) -> None:
        """Apply a /_control payload: any StandinConfig fields, plus ``reset`` (clears counters, the
        request log, faults and rules first). Unknown keys or bad values raise ValidationError."""
        changes = dict(changes)
        reset = bool(changes.pop("reset", False))
        faults = changes.pop("faults", None)
        config = StandinConfig.model_validate({**self.config.model_dump(), **changes})  # validate first
        if reset:
            self.reset_counters()
            self.faults.clear()
            if "rules" not in changes:
                config = config.model_copy(update={"rules": []})
        self.config = config
        if faults is not None:
            self.faults = deque(StandinConfig(faults=faults).faults)

    def stats(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "answered": sum(self.answered_by_hash.values()),
            "by_status": dict(self.by_status),
            "requests_by_hash": dict(self.requests_by_hash),
            "answered_by_hash": dict(self.answered_by_hash),
            "answered_twice": sorted(h for h, n in self.answered_by_hash.items() if n > 1),
            "faults_served": sum(self.faults_served.values()),
            "faults_by_kind": dict(self.faults_served),
            "faults_pending": len(self.faults),
            "in_flight": self.in_flight,
            "max_concurrency_observed": self.max_in_flight,
            "batches": len(self.batches),
            "config": self.config.model_dump(exclude={"faults", "api_key"}),
        }

    def next_fault(self, text: str, image_digest: str) -> dict[str, Any] | None:
        if self.faults:
            return self.faults.popleft()
        for rule in self.config.rules:
            if ("match" in rule and rule["match"] in text) or rule.get("image_hash") == image_digest:
                return rule
        return None

    async def complete(
        self, body: Any, authorization: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Answer one chat.completions body: (status, JSON payload, extra headers)."""
        self.requests_total += 1
        key = canonical_hash(body)
        self.requests_by_hash[key] += 1
        status, payload, headers = await self._complete(body, authorization)
        self.by_status[str(status)] += 1
        if status == 200:
            self.answered_by_hash[key] += 1
        entry = {"hash": key, "status": status, "time": time.time()}
        if isinstance(body, dict):
            texts, images = _parts(body)
            entry.update(
                text="\n".join(texts),
                images=len(images),
                image_hash=image_digest(images),
                body=_sanitize(body),
            )
        self.log.append(entry)
        return status, payload, headers

    async def _complete(
        self, body: Any, authorization: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        cfg = self.config
        if cfg.api_key and authorization != f"Bearer {cfg.api_key}":
            return 401, _error(401, "Incorrect API key provided.", code="invalid_api_key"), {}
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
            return 400, _error(400, "the body needs 'model' and a list of 'messages'"), {}
        model = str(body["model"])
        if cfg.models and model not in cfg.models:
            return 404, _error(404, f"The model `{model}` does not exist.", code="model_not_found"), {}
        if not cfg.supports_logprobs and (body.get("logprobs") or body.get("top_logprobs")):
            return 400, _error(400, "logprobs are not supported by this model"), {}
        if not cfg.supports_response_format and body.get("response_format"):
            return 400, _error(400, "response_format of type json_schema is not supported"), {}
        texts, images = _parts(body)
        fault = self.next_fault("\n".join(texts), image_digest(images))
        if fault and "status" in fault:
            self.faults_served[str(fault["status"])] += 1
            headers = {}
            if fault.get("retry_after") is not None:
                headers["retry-after"] = str(fault["retry_after"])
            if fault.get("retry_after_ms") is not None:
                headers["retry-after-ms"] = str(fault["retry_after_ms"])
            message = fault.get("message", f"injected fault {fault['status']}")
            return int(fault["status"]), _error(int(fault["status"]), message, kind="server_error"), headers
        async with self.semaphore:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if cfg.latency_ms:
                    await asyncio.sleep(cfg.latency_ms / 1000)
                if fault and fault.get("hang"):
                    self.faults_served["hang"] += 1
                    await asyncio.sleep(float(fault["hang"]))
                garbage = cfg.policy == "garbage" or bool(fault and fault.get("garbage"))
                if fault and fault.get("garbage"):
                    self.faults_served["garbage"] += 1
                if garbage:
                    probs, tokens, content = None, re.findall(r"\s*\S+", GARBAGE), GARBAGE
                else:
                    try:
                        probs, rationale = decide(cfg.policy, images, cfg.sharpness_margin)
                    except ValueError as exc:
                        return 400, _error(400, f"cannot judge this request: {exc}"), {}
                    label = max(probs, key=probs.__getitem__)
                    tokens = answer_tokens(rationale, label)
                    content = "".join(tokens)
                from labeler.pricing import chat_input_tokens

                try:
                    prompt_tokens = chat_input_tokens(body["messages"], model)[0]
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    return 400, _error(400, f"unreadable messages: {exc}"), {}
                top = None
                if cfg.logprobs and body.get("logprobs"):
                    top = int(body.get("top_logprobs") or 0)
                return 200, build_completion(model, content, tokens, probs, top, prompt_tokens), {}
            finally:
                self.in_flight -= 1


# --------------------------------------------------------------------------- Batch API


def _now() -> int:
    return int(time.time())


def _file_object(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "content"}


def _store_file(state: StandinState, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
    record = {
        "id": "file-" + uuid.uuid4().hex[:24],
        "object": "file",
        "bytes": len(content),
        "created_at": _now(),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "content": content,
    }
    state.files[record["id"]] = record
    return record


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """form field -> (filename, bytes), with the standard library's MIME parser."""
    from email import policy
    from email.parser import BytesParser

    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ValueError("expected a multipart/form-data body")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


def _batch_line_error(line: Any, number: int) -> str | None:
    if not isinstance(line, dict):
        return f"line {number}: not a JSON object"
    for key in ("custom_id", "method", "url", "body"):
        if key not in line:
            return f"line {number}: missing {key!r}"
    if line["method"] != "POST" or line["url"] != "/v1/chat/completions":
        return f"line {number}: only POST /v1/chat/completions is supported"
    return None


async def run_batch(state: StandinState, batch_id: str) -> None:
    """validating -> in_progress -> finalizing -> completed (or failed / cancelled)."""
    batch = state.batches[batch_id]
    await asyncio.sleep(state.config.batch_delay_s)
    raw = state.files[batch["input_file_id"]]["content"].decode("utf-8", errors="replace")
    lines, errors = [], []
    for number, text in enumerate(raw.splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.append({"code": "invalid_json_line", "message": f"line {number}: {exc}", "line": number})
            continue
        problem = _batch_line_error(line, number)
        if problem:
            errors.append({"code": "invalid_request", "message": problem, "line": number})
        lines.append(line)
    if errors or not lines:
        errors = errors or [
            {"code": "empty_file", "message": "the input file holds no requests", "line": None}
        ]
        batch.update(status="failed", failed_at=_now(), errors={"object": "list", "data": errors})
        return
    batch.update(status="in_progress", in_progress_at=_now())
    batch["request_counts"]["total"] = len(lines)
    outputs: list[str] = []
    failures: list[str] = []

    pending = deque(lines)

    async def worker() -> None:
        # A pool of max_concurrency workers, each checking for a cancel before its next line.
        while pending and batch["status"] != "cancelling":
            line = pending.popleft()
            status, payload, _ = await state.complete(line["body"], f"Bearer {state.config.api_key}")
            out = {
                "id": "batch_req_" + uuid.uuid4().hex[:24],
                "custom_id": line["custom_id"],
                "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": payload},
                "error": None,
            }
            (outputs if status == 200 else failures).append(json.dumps(out))
            batch["request_counts"]["completed" if status == 200 else "failed"] += 1

    await asyncio.gather(*(worker() for _ in range(max(1, min(state.config.max_concurrency, len(lines))))))
    cancelled = batch["status"] == "cancelling"
    batch.update(status="cancelling" if cancelled else "finalizing", finalizing_at=_now())
    if outputs:
        batch["output_file_id"] = _store_file(
            state, ("\n".join(outputs) + "\n").encode(), "output.jsonl", "batch_output"
        )["id"]
    if failures:
        batch["error_file_id"] = _store_file(
            state, ("\n".join(failures) + "\n").encode(), "errors.jsonl", "batch_output"
        )["id"]
    if cancelled:
        batch.update(status="cancelled", cancelled_at=_now())
    else:
        batch.update(status="completed", completed_at=_now())


# --------------------------------------------------------------------------- the app


def create_app(config: StandinConfig | None = None) -> FastAPI:
    """The FastAPI app; ``app.state.standin`` is its StandinState. (FastAPI is imported at module
    level because it resolves the routes' string annotations against the module's globals.)"""
    state = StandinState(config or StandinConfig())
    app = FastAPI(title="densepref OpenAI-compatible stand-in")
    app.state.standin = state
    tasks: set[asyncio.Task[None]] = set()

    def err(status: int, message: str) -> JSONResponse:
        return JSONResponse(_error(status, message), status_code=status)

    def authorized(request: Request) -> bool:
        key = state.config.api_key
        return not key or request.headers.get("authorization") == f"Bearer {key}"

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return err(400, "the body is not JSON")
        status, payload, headers = await state.complete(body, request.headers.get("authorization"))
        return JSONResponse(payload, status_code=status, headers=headers)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        if not authorized(request):
            return err(401, "Incorrect API key provided.")
        names = state.config.models or ["standin-vlm"]
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": n, "object": "model", "created": 0, "owned_by": "standin"} for n in names],
            }
        )

    @app.post("/v1/files")
    async def upload_file(request: Request) -> JSONResponse:
        if not authorized(request):
            return err(401, "Incorrect API key provided.")
        try:
            fields = _parse_multipart(request.headers.get("content-type", ""), await request.body())
        except ValueError as exc:
            return err(400, str(exc))
        if "file" not in fields:
            return err(400, "missing the 'file' field")
        purpose = fields.get("purpose", (None, b"batch"))[1].decode()
        filename, content = fields["file"]
        return JSONResponse(_file_object(_store_file(state, content, filename or "upload.jsonl", purpose)))

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> JSONResponse:
        record = state.files.get(file_id)
        return JSONResponse(_file_object(record)) if record else err(404, f"No such File object: {file_id}")

    @app.get("/v1/files/{file_id}/content")
    async def get_file_content(file_id: str) -> Response:
        record = state.files.get(file_id)
        if record is None:
            return err(404, f"No such File object: {file_id}")
        return Response(record["content"], media_type="application/octet-stream")

    @app.post("/v1/batches")
    async def create_batch(request: Request) -> JSONResponse:
        if not authorized(request):
            return err(401, "Incorrect API key provided.")
        body = await request.json()
        if body.get("input_file_id") not in state.files:
            return err(400, f"unknown input_file_id {body.get('input_file_id')!r}")
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return err(400, "endpoint must be /v1/chat/completions and completion_window 24h")
        now = _now()
        batch = {
            "id": "batch_" + uuid.uuid4().hex[:24], "object": "batch", "endpoint": body["endpoint"],
            "errors": None, "input_file_id": body["input_file_id"], "completion_window": "24h",
            "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
            "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
            "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata"),
        }  # fmt: skip
        state.batches[batch["id"]] = batch
        task = asyncio.create_task(run_batch(state, batch["id"]))
        tasks.add(task)  # keep a reference until it finishes
        task.add_done_callback(tasks.discard)
        return JSONResponse(batch)

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str) -> JSONResponse:
        batch = state.batches.get(batch_id)
        return JSONResponse(batch) if batch else err(404, f"No such batch: {batch_id}")

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> JSONResponse:
        batch = state.batches.get(batch_id)
        if batch is None:
            return err(404, f"No such batch: {batch_id}")
        if batch["status"] in ("validating", "in_progress"):
            batch.update(status="cancelling", cancelling_at=_now())
        return JSONResponse(batch)

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

    return app


# --------------------------------------------------------------------------- runners


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class StandinServer:
    """The stand-in on 127.0.0.1 and a free port, served by uvicorn in a background thread.

    ``with StandinServer(policy="first") as server: OpenAIJudge("m", base_url=server.base_url)``
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        import uvicorn

        self.app = create_app(StandinConfig(**config))
        self._socket = _bind(host, port)
        self.host, self.port = self._socket.getsockname()[:2]
        uv_config = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def state(self) -> StandinState:
        return self.app.state.standin

    def start(self) -> StandinServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the stand-in server did not start")
            time.sleep(0.01)
        return self

    def control(self, **changes: Any) -> dict[str, Any]:
        """Change settings (see StandinConfig; ``reset=True`` clears counters, faults and rules)."""
        import httpx

        response = httpx.post(self.url + "/_control", json=changes, timeout=10)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        import httpx

        return httpx.get(self.url + "/_stats", timeout=10).json()

    def requests(self, limit: int = 50) -> list[dict[str, Any]]:
        """Recent request bodies (images replaced by hashes) with their status and text."""
        import httpx

        return httpx.get(self.url + "/_requests", params={"limit": limit}, timeout=10).json()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_standin_process(timeout: float = 30.0, **config: Any) -> tuple[subprocess.Popen[str], str]:
    """Run the stand-in in its own process (so it does not share a GIL with the client under test);
    returns (process, base_url) once GET /v1/models answers. Settings beyond the CLI flags are
    applied through /_control. The caller terminates the process."""
    import httpx

    flags = {"policy": "--policy", "latency_ms": "--latency-ms", "max_concurrency": "--max-concurrency"}
    cmd = [sys.executable, "-m", "labeler.standin", "--host", "127.0.0.1", "--port", "0"]
    for key, flag in flags.items():
        if key in config:
            cmd += [flag, str(config.pop(key))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("http"):
        proc.kill()
        raise RuntimeError(f"the stand-in process did not print its URL (got {line!r}, exit {proc.poll()})")
    base_url = line
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(base_url + "/models", timeout=2).raise_for_status()
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the stand-in process did not become ready") from None
            time.sleep(0.05)
    if config:
        httpx.post(base_url.removesuffix("/v1") + "/_control", json=config, timeout=10).raise_for_status()
    return proc, base_url


def main(argv: list[str] | None = None) -> None:
    """``python -m labeler.standin``: serve until interrupted, after printing the base URL."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--policy", default="hash", choices=list(Policy.__args__))  # type: ignore[attr-defined]
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--max-concurrency", type=int, default=64)
    parser.add_argument("--no-logprobs", action="store_true", help="never return logprobs")
    parser.add_argument("--api-key", default=None, help="demand this bearer key")
    args = parser.parse_args(argv)
    config = StandinConfig(
        policy=args.policy, latency_ms=args.latency_ms, max_concurrency=args.max_concurrency,
        logprobs=not args.no_logprobs, api_key=args.api_key,
    )  # fmt: skip
    sock = _bind(args.host, args.port)
    print(f"http://{args.host}:{sock.getsockname()[1]}/v1", flush=True)
    uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", lifespan="off")).run(
        sockets=[sock]
    )


if __name__ == "__main__":
    main()
