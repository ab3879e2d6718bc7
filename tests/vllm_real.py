"""vLLM's own code, for tests that check the openai judge against it instead of our beliefs.

vLLM cannot be a pip extra: its wheel pins a CUDA torch, so it is installed with ``--no-deps`` (plus
the few packages its protocol module, exception handlers and argument parser import, pinned in
``.ci/vllm-protocol.txt``) by ``.ci/run``. Where it is absent the tests skip with a loud reason;
with ``DENSEPREF_REQUIRE_VLLM=1`` (set by .ci/run once the install succeeded) they fail instead.

- :func:`vllm_app`: a FastAPI front end made of vLLM's ``ChatCompletionRequest`` (FastAPI parses
  each body into it, exactly as vLLM's router does), ``to_sampling_params`` (where vLLM merges
  ``response_format`` into its structured-output parameters) and vLLM's exception handlers, so
  every status and error body is vLLM's own. Only the generation is ours: the stand-in's answer,
  validated through vLLM's ``ChatCompletionResponse`` on the way out.
- :func:`serve_parser`: ``vllm serve``'s argument parser.
"""

# No ``from __future__ import annotations``: FastAPI reads the route's parameter types at run time.

import argparse
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # vLLM's platform probe: no GPU here

VLLM_VERSION = "0.34.0"


def require_vllm() -> Any:
    """The vllm package, or a skip (a failure under DENSEPREF_REQUIRE_VLLM=1) saying how to get it."""
    try:
        import vllm
        from vllm.entrypoints.openai.chat_completion import protocol  # noqa: F401
    except ImportError as exc:
        reason = (
            f"vLLM is not installed ({exc}): these tests check the openai judge against vLLM's own "
            f"code. Install it as CI does: pip install --no-deps vllm=={VLLM_VERSION} "
            "-r .ci/vllm-protocol.txt"
        )
        if os.environ.get("DENSEPREF_REQUIRE_VLLM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return vllm


def vllm_app(answer: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """vLLM's chat route in miniature; ``answer(body)`` is the chat.completion the model gives."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionRequest,
        ChatCompletionResponse,
    )
    from vllm.entrypoints.serve.exception_handling.register import init_exception_handler

    app = FastAPI()
    app.state.args = argparse.Namespace(log_error_stack=False)
    app.state.requests = []
    init_exception_handler(app)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(request: ChatCompletionRequest, raw_request: Request):
        app.state.requests.append(request)
        # Where vLLM's serving_chat turns the request into engine parameters; its checks raise
        # VLLMValidationError, which vLLM's handlers answer with a 400.
        request.to_sampling_params(
            max_tokens=request.max_completion_tokens or 512, default_sampling_params={}
        )
        body = await raw_request.json()
        response = ChatCompletionResponse.model_validate(answer(body))
        return JSONResponse(response.model_dump())

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": []}

    return app


class Served:
    """An ASGI app on 127.0.0.1 and a free port, in a background thread (``with Served(app) as s``)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        from labeler.standin.runners import _bind

        self._socket = _bind("127.0.0.1", 0)
        self.port = self._socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> "Served":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the vLLM front end did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


def serve_parser() -> Any:
    """``vllm serve``'s own argument parser (vllm/entrypoints/common/cli_args.py)."""
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="vllm serve", exit_on_error=False))
