"""The stand-in's run-time state: settings, counters, the request log, and answering one request."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, deque
from typing import Any

from labeler.standin.behaviour import (
    GARBAGE,
    StandinConfig,
    _error,
    _parts,
    _sanitize,
    answer_tokens,
    build_completion,
    canonical_hash,
    decide,
    image_digest,
    schema_label_first,
    vllm_structured_outputs_error,
)

# --------------------------------------------------------------------------- server state


class StandinState:
    """Settings, fault queue, counters, and the Batch API's files and batches."""

    def __init__(self, config: StandinConfig) -> None:
        self.config = config.model_copy(update={"faults": [], "rules": list(config.rules)})
        self.faults: deque[dict[str, Any]] = deque(config.faults)
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.enqueued_tokens: dict[str, int] = {}  # batch id -> input tokens (Batch API limit)
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_size = 0
        #: Set by ``/_control {"release_hangs": true}``: ends every ``{"hang": "until_released"}``.
        #: Made lazily inside the server's loop, like the semaphore.
        self._release: asyncio.Event | None = None
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
        #: USD the answered requests would be billed at the models_table price ("batch": half).
        self.billed_usd = {"online": 0.0, "batch": 0.0}

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
        release = bool(changes.pop("release_hangs", False))
        faults = changes.pop("faults", None)
        config = StandinConfig.model_validate({**self.config.model_dump(), **changes})  # validate first
        if (release or reset) and self._release is not None:
            self._release.set()  # a reset releases the hangs of the test before, too
            if reset:
                self._release = None  # later hangs wait for the next release
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
            "billed_usd": dict(self.billed_usd),
            "config": self.config.model_dump(exclude={"faults", "api_key"}),
        }

    async def _hang(self, how: Any) -> None:
        """``"until_released"``: wait until ``/_control {"release_hangs": true}`` (or a reset), so a
        client's timeout always fires first however slow the machine is; a number: sleep that long."""
        if how == "until_released":
            if self._release is None:
                self._release = asyncio.Event()
            await self._release.wait()
        else:
            await asyncio.sleep(float(how))

    def next_fault(self, text: str, image_digest: str) -> dict[str, Any] | None:
        if self.faults:
            return self.faults.popleft()
        for rule in self.config.rules:
            if ("match" in rule and rule["match"] in text) or rule.get("image_hash") == image_digest:
                return rule
        return None

    async def complete(
        self, body: Any, authorization: str | None, *, batch: bool = False
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Answer one chat.completions body: (status, JSON payload, extra headers). ``batch``: a
        Batch API line, billed at the Batch API's half price."""
        self.requests_total += 1
        key = canonical_hash(body)
        self.requests_by_hash[key] += 1
        status, payload, headers = await self._complete(body, authorization)
        self.by_status[str(status)] += 1
        if status == 200:
            self.answered_by_hash[key] += 1
            self._bill(payload, batch)
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

    def _bill(self, payload: dict[str, Any], batch: bool) -> None:
        from labeler.judges.pricing import estimate_cost

        usage = payload.get("usage") or {}
        cost = estimate_cost(
            str(payload.get("model")),
            usage.get("prompt_tokens", 0),
            usage.get("completion_tokens", 0),
            batch=batch,
            cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
        )
        self.billed_usd["batch" if batch else "online"] += cost or 0.0

    def _loops_on_whitespace(self, body: dict[str, Any]) -> bool:
        """vLLM's default grammar lets some models emit whitespace forever (StandinConfig). Only the
        server flag stops it: vLLM's grammar backends read ``disable_any_whitespace`` from the
        server's StructuredOutputsConfig, never from a request."""
        cfg = self.config
        if cfg.flavour != "vllm" or not cfg.whitespace_loop or not body.get("response_format"):
            return False
        return not cfg.structured_outputs_config.get("disable_any_whitespace")

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
        if cfg.flavour == "vllm" and (
            problem := vllm_structured_outputs_error(
                body.get("structured_outputs"), body.get("response_format")
            )
        ):
            return 400, _error(400, problem, kind="BadRequestError"), {}
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
            started = time.perf_counter()
            try:
                if fault and fault.get("hang"):
                    self.faults_served["hang"] += 1
                    await self._hang(fault["hang"])
                garbage = cfg.policy == "garbage" or bool(fault and fault.get("garbage"))
                if fault and fault.get("garbage"):
                    self.faults_served["garbage"] += 1
                finish = "stop"
                limit = body.get("max_completion_tokens") or body.get("max_tokens")
                thinking = cfg.reasoning_tokens
                if thinking and isinstance(limit, int) and limit <= thinking:
                    thinking, probs, tokens, content, finish = limit, None, [], "", "length"
                elif self._loops_on_whitespace(body):
                    limit = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
                    tokens = ["{"] + ["\n"] * max(0, limit - 1)
                    probs, content, finish = None, "".join(tokens), "length"
                elif garbage:
                    probs, tokens, content = None, re.findall(r"\s*\S+", GARBAGE), GARBAGE
                else:
                    try:
                        probs, rationale = decide(cfg.policy, images, cfg.sharpness_margin)
                    except ValueError as exc:
                        return 400, _error(400, f"cannot judge this request: {exc}"), {}
                    label = max(probs, key=probs.__getitem__)
                    tokens = answer_tokens(rationale, label, label_first=schema_label_first(body))
                    content = "".join(tokens)
                from labeler.judges.pricing import chat_input_tokens

                try:
                    prompt_tokens = chat_input_tokens(body["messages"], model)[0]
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    return 400, _error(400, f"unreadable messages: {exc}"), {}
                top = None
                if cfg.logprobs and body.get("logprobs"):
                    top = int(body.get("top_logprobs") or 0)
                completion = build_completion(
                    model,
                    content,
                    tokens,
                    probs,
                    top,
                    prompt_tokens,
                    grammar_masked=cfg.flavour == "vllm" and bool(body.get("response_format")),
                    finish_reason=finish,
                )
                if thinking:
                    usage = completion["usage"]
                    usage["completion_tokens"] = len(tokens) + thinking
                    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                    usage["completion_tokens_details"] = {"reasoning_tokens": thinking}
                if cfg.cached_prompt_tokens:
                    cached = min(cfg.cached_prompt_tokens, prompt_tokens)
                    completion["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
                # latency_ms is the whole service time of a request in its slot, the stand-in's own
                # work included, like a GPU server whose answer takes L: sleep for what is left.
                left = cfg.latency_ms / 1000 - (time.perf_counter() - started)
                if left > 0:
                    await asyncio.sleep(left)
                return 200, completion, {}
            finally:
                self.in_flight -= 1
