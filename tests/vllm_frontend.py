"""A chat-completions front end built from vLLM's own code, for ``--input video`` tests.

Each request is validated with vLLM's ``ChatCompletionRequest``, its per-request multimodal kwargs
are checked by vLLM's ``validate_request_mm_kwargs`` (refused unless the server trusts them, as
``vllm serve`` without ``--trust-request-mm-kwargs`` does), and every ``video_url`` part is decoded
by vLLM's ``MediaConnector.fetch_video`` with the request's ``media_io_kwargs`` merged the way
vLLM merges them. What was decoded is kept for the test to inspect; the answer is a fixed
chat.completion preferring the first video. Needs vLLM installed (``pip install --no-deps
vllm==0.34.0`` plus the few packages its protocol module imports); tests skip without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the handler's annotations here

from tests.vllm_real import Served


@dataclass
class SeenVideo:
    frames: np.ndarray  # [K, H, W, 3] as vLLM's loader decoded them
    metadata: dict[str, Any]


@dataclass
class FrontendState:
    trust_mm_kwargs: bool = True
    requests: list[list[SeenVideo]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


def _answer(model: str, prompt_tokens: int) -> dict[str, Any]:
    content = '{"label": "A", "rationale": "Video A is cleaner."}'
    return {
        "id": "chatcmpl-vllm-frontend",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 12,
            "total_tokens": prompt_tokens + 12,
        },
    }


def create_app(state: FrontendState) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from pydantic import ValidationError
    from vllm.entrypoints.generate.base.protocol import validate_request_mm_kwargs
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.exceptions import VLLMValidationError
    from vllm.multimodal.media.connector import MediaConnector, merge_media_io_kwargs

    app = FastAPI()

    def error(message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": 400}}, 400)

    @app.post("/v1/chat/completions")
    async def chat(raw: Request) -> JSONResponse:
        try:
            request = ChatCompletionRequest.model_validate(await raw.json())
            validate_request_mm_kwargs(
                mm_processor_kwargs=request.mm_processor_kwargs,
                media_io_kwargs=request.media_io_kwargs,
                trust_request_mm_kwargs=state.trust_mm_kwargs,
            )
        except (ValidationError, ValueError, VLLMValidationError) as exc:
            return error(str(exc))
        connector = MediaConnector(merge_media_io_kwargs(None, request.media_io_kwargs))
        seen: list[SeenVideo] = []
        text: list[str] = []
        for message in request.messages:
            content = message.get("content")
            if isinstance(content, str):
                text.append(content)
                continue
            for part in content or []:
                if part.get("type") == "video_url":
                    try:
                        video = connector.fetch_video(part["video_url"]["url"]).media
                    except ValueError as exc:
                        return error(f"video could not be loaded: {exc}")
                    frames, metadata = video
                    seen.append(SeenVideo(np.asarray(frames), dict(metadata)))
                elif part.get("type") == "text":
                    text.append(part["text"])
        state.requests.append(seen)
        state.texts.append("\n".join(text))
        return JSONResponse(_answer(request.model or "", 100))

    return app


class VllmFrontend(Served):
    """The front end on 127.0.0.1 and a free port (``Served``: uvicorn in a background thread)."""

    def __init__(self, *, trust_mm_kwargs: bool = True) -> None:
        self.state = FrontendState(trust_mm_kwargs=trust_mm_kwargs)
        super().__init__(create_app(self.state))

    def __enter__(self) -> VllmFrontend:
        super().__enter__()
        return self
