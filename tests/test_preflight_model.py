"""Preflight: an unknown --model is one exit-2 line where GET /models is authoritative (OpenAI's own
API, vllm serve), and is left to the first request where a gateway accepts names it does not list.

The model lists come from the real types: vLLM's own ModelList/ModelCard, and the OpenAI SDK's Model
(the OpenAPI document's ListModelsResponse), never from our own beliefs.
"""

from __future__ import annotations

import httpx
import pytest
from openai.types import Model

from labeler.errors import PreflightError
from labeler.preflight import check_openai_endpoint
from tests.vllm_real import require_vllm


def _serving(payload: dict) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/models")
        return httpx.Response(200, json=payload)

    return httpx.MockTransport(handler)


def _vllm_models(*names: str) -> dict:
    require_vllm()
    from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelList

    return ModelList(data=[ModelCard(id=name, root=name) for name in names]).model_dump()


def _openai_models(*names: str) -> dict:
    cards = [Model(id=n, created=0, object="model", owned_by="system").model_dump() for n in names]
    return {"object": "list", "data": cards}


def test_vllm_refuses_a_model_it_does_not_serve_naming_what_it_serves():
    transport = _serving(_vllm_models("Qwen/Qwen2.5-VL-7B-Instruct"))
    with pytest.raises(PreflightError, match=r"--model 'qwen2.5-vl'.*Qwen/Qwen2.5-VL-7B-Instruct"):
        check_openai_endpoint(
            "http://gpu:8000/v1", None, official=False, model="qwen2.5-vl", transport=transport
        )


def test_vllm_accepts_a_model_it_serves():
    transport = _serving(_vllm_models("Qwen/Qwen2.5-VL-7B-Instruct"))
    check_openai_endpoint(
        "http://gpu:8000/v1", None, official=False, model="Qwen/Qwen2.5-VL-7B-Instruct", transport=transport
    )


def test_openai_refuses_an_unlisted_model():
    transport = _serving(_openai_models("gpt-4o-mini", "gpt-4.1"))
    with pytest.raises(PreflightError, match="gpt-4o-mni"):
        check_openai_endpoint(
            "https://api.openai.com/v1", "sk-x", official=True, model="gpt-4o-mni", transport=transport
        )


def test_a_gateway_list_is_not_authoritative():
    """A LiteLLM proxy or Azure deployment serves aliases it does not list: no refusal here."""
    models = _openai_models("gpt-4o-mini")
    models["data"][0]["owned_by"] = "openai"
    check_openai_endpoint(
        "http://proxy:4000/v1", "k", official=False, model="my-alias", transport=_serving(models)
    )


def test_an_unreadable_list_leaves_the_check_to_the_first_request():
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text="ok"))
    check_openai_endpoint("http://x/v1", "k", official=True, model="gpt-4o-mini", transport=transport)
