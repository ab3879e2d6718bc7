"""A fake Gemini API for the ``gemini`` judge's tests, built from Google's own SDK types.

An ``httpx.MockTransport`` handler: it parses each ``:generateContent`` body into
``google.genai.types`` objects (``Content``, ``GenerationConfig``; a body they cannot read fails
the test's request with 400), decodes every inline ``video/mp4`` with PyAV to check it holds
frames, and answers with a ``GenerateContentResponse`` built from the SDK's types and dumped to
the API's camelCase JSON. ``script`` says what to answer: a label, a status code to fail with, a
garbage text, or a refusal of logprobs.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class SeenRequest:
    contents: list[Any]
    config: Any
    system: Any
    videos: list[tuple[int, float | None]]  # (frames decoded from the mp4, videoMetadata.fps)


@dataclass
class FakeGemini:
    #: Answers in order, the last repeated: "A" | "B" | "tie" | "garbage" | an int status | "no-logprobs".
    script: list[Any] = field(default_factory=lambda: ["A"])
    probs: dict[str, float] = field(default_factory=lambda: {"A": 0.7, "B": 0.2, "tie": 0.1})
    seen: list[SeenRequest] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))

    def _next(self) -> Any:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def handle(self, request: httpx.Request) -> httpx.Response:
        from google.genai import types

        if not request.url.path.endswith(":generateContent"):
            return httpx.Response(
                404, json={"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}
            )
        body = json.loads(request.content)
        try:
            contents = [types.Content.model_validate(c) for c in body["contents"]]
            config = types.GenerationConfig.model_validate(body.get("generationConfig") or {})
            system = (
                types.Content.model_validate(body["systemInstruction"])
                if "systemInstruction" in body
                else None
            )
        except Exception as exc:  # the SDK's own types could not read what the judge sent
            return _error(400, f"invalid request: {exc}")
        videos = []
        for content in contents:
            for part in content.parts or []:
                if part.inline_data is not None:
                    if part.inline_data.mime_type != "video/mp4":
                        return _error(400, f"unexpected inline {part.inline_data.mime_type}")
                    fps = part.video_metadata.fps if part.video_metadata else None
                    videos.append((_count_frames(part.inline_data.data or b""), fps))
        self.seen.append(SeenRequest(contents, config, system, videos))
        step = self._next()
        if isinstance(step, int):
            return _error(step, f"fake failure {step}")
        if step == "no-logprobs" and config.response_logprobs:
            return _error(400, "Logprobs is not enabled for this model.")
        if step == "no-logprobs":
            step = "A"
        text = "not json at all" if step == "garbage" else json.dumps({"label": step, "rationale": "fake"})
        logprobs = None
        if config.response_logprobs and step != "garbage":
            logprobs = _logprobs(text, step, self.probs, config.logprobs or 5)
        response = types.GenerateContentResponse(
            candidates=[
                types.Candidate(
                    content=types.Content(role="model", parts=[types.Part(text=text)]),
                    finish_reason=types.FinishReason.STOP,
                    logprobs_result=logprobs,
                )
            ],
            usage_metadata=types.GenerateContentResponseUsageMetadata(
                prompt_token_count=1000 + 258 * sum(n for n, _ in videos), candidates_token_count=15
            ),
            model_version="gemini-fake-001",
        )
        return httpx.Response(200, json=response.model_dump(mode="json", by_alias=True, exclude_none=True))


def _error(code: int, message: str) -> httpx.Response:
    status = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
    return httpx.Response(
        code, json={"error": {"code": code, "message": message, "status": status.get(code, "")}}
    )


def _count_frames(data: bytes) -> int:
    import av

    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def _logprobs(text: str, label: str, probs: dict[str, float], top: int) -> Any:
    """Tokens of the answer, the label value its own token with the given alternatives."""
    from google.genai import types

    head, _, tail = text.partition(json.dumps(label))
    tokens = [head + '"', label, '"' + tail]
    chosen = [types.LogprobsResultCandidate(token=t, log_probability=0.0) for t in tokens]
    chosen[1] = types.LogprobsResultCandidate(token=label, log_probability=math.log(probs[label]))
    alternatives = [
        types.LogprobsResultCandidate(token=name, log_probability=math.log(p))
        for name, p in sorted(probs.items(), key=lambda kv: -kv[1])[:top]
    ]
    return types.LogprobsResult(
        chosen_candidates=chosen,
        top_candidates=[
            types.LogprobsResultTopCandidates(candidates=[chosen[0]]),
            types.LogprobsResultTopCandidates(candidates=alternatives),
            types.LogprobsResultTopCandidates(candidates=[chosen[2]]),
        ],
    )
