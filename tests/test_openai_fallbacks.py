"""Refused parameters under concurrency, the error body shapes endpoints use (Gemini's OpenAI
layer answers with an array), and models the judge must refuse before sending anything."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from labeler.judges.openai_api import OpenAIJudge
from labeler.judges.openai_errors import server_message
from labeler.schemas import SegmentRequest
from labeler.standin import StandinServer
from tests.conftest import textured_frames


def _request() -> SegmentRequest:
    frames = textured_frames(2, h=32, w=48)
    return SegmentRequest(
        prompt="a fox", frames_first=frames, frames_second=frames[::-1].copy(), start_s=0, end_s=1
    )


def _sdk_error(status: int, body: object) -> openai.APIStatusError:
    """The exception the openai SDK raises for this HTTP answer (its own _make_status_error)."""
    request = httpx.Request("POST", "http://x/v1/chat/completions")
    response = httpx.Response(status, json=body, request=request)
    client = openai.OpenAI(api_key="k", base_url="http://x/v1")
    return client._make_status_error_from_response(response)


def test_requests_in_flight_when_a_parameter_is_refused_are_resent_without_it():
    """Eight bodies built with logprobs before the first refusal comes back: the first refusal
    records the fallback, the seven others are resent without logprobs, none fails."""
    with StandinServer(supports_logprobs=False) as server:
        judge = OpenAIJudge("gpt-4o-mini", base_url=server.base_url, api_key="k")
        messages = judge._messages(_request())

        async def go():
            try:
                # gather starts every coroutine before any answer arrives: each builds its body
                # (with logprobs) and awaits the network, so all eight meet the refusal.
                return await asyncio.gather(*(judge._create(messages) for _ in range(8)))
            finally:
                await judge.aclose()

        answers = asyncio.run(go())
        assert len(answers) == 8 and all(a["choices"] for a in answers)
        assert list(judge.fallbacks) == ["logprobs"] and judge.endpoint_fallbacks() == ["logprobs"]
        refused = [e for e in server.state.log if e["status"] == 400]
        assert len(refused) == 8 and all("logprobs" in e["body"] for e in refused)
        assert not any("logprobs" in e["body"] for e in server.state.log if e["status"] == 200)


def test_gemini_array_error_body_is_read_and_its_fallback_applies():
    body = [{"error": {"code": 400, "message": 'Invalid JSON payload received. Unknown name "logprobs": '
                       "Cannot find field.", "status": "INVALID_ARGUMENT"}}]  # fmt: skip
    exc = _sdk_error(400, body)
    assert 'Unknown name "logprobs"' in server_message(exc)
    judge = OpenAIJudge("gemini-2.5-flash", base_url="http://x/v1", api_key="k")
    assert judge._apply_fallback(server_message(exc)) and "logprobs" in judge.fallbacks


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": "outer", "metadata": {}}},
        {"error": '{"error": {"message": "inner proxy message"}}'},
        {"message": "bare message"},
        [{"error": {"message": "first"}}, {"error": {"message": "second"}}],
    ],
)
def test_nested_error_shapes_give_the_servers_words(body):
    message = server_message(_sdk_error(400, body))
    assert not message.startswith("Error code"), message
    assert any(word in message for word in ("outer", "inner proxy", "bare", "first; second"))


def test_gemini_schema_field_error_drops_strict_then_the_schema():
    message = (
        "* GenerateContentRequest.generation_config.response_schema.properties[label].enum: "
        "only allowed for STRING type"
    )
    judge = OpenAIJudge("gemini-2.5-flash", base_url="http://x/v1", api_key="k")
    assert judge._apply_fallback(message) and "strict" in judge.fallbacks
    assert judge._apply_fallback(message) and "response_format" in judge.fallbacks
    assert "response_format" not in judge.build_body(_request())


@pytest.mark.parametrize(
    "model",
    [
        "o1-pro",
        "o3-pro",
        "gpt-5-pro",
        "gpt-5-pro-2025-10-06",
        "gpt-5.2-pro",
        "gpt-5.4-pro",
        "gpt-5.5-pro-2026-04-23",
    ],
)
def test_responses_only_models_are_refused_before_any_request(model):
    with pytest.raises(ValueError, match="Responses API only"):
        OpenAIJudge(model, api_key="k")


def test_cli_refuses_a_responses_only_model_with_exit_2(tmp_path, capsys):
    from labeler.batch import main

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    with pytest.raises(SystemExit) as exit_:
        main([str(manifest), "--out", str(tmp_path / "o.jsonl"), "--judge", "openai", "--model", "o3-pro"])
    assert exit_.value.code == 2 and "Responses API only" in capsys.readouterr().err


def test_a_reasoning_model_behind_an_alias_is_detected_from_its_first_answer():
    """An Azure deployment name hides o3: the first answer is cut after 2,000 hidden reasoning
    tokens; the judge switches once to a reasoning budget and every later request answers."""
    with StandinServer(reasoning_tokens=2000) as server:
        judge = OpenAIJudge("my-azure-deployment", base_url=server.base_url, api_key="k")

        async def go():
            try:
                return [await judge.judge(_request()) for _ in range(3)]
            finally:
                await judge.aclose()

        judgments = asyncio.run(go())
        assert all(j.label in ("A", "B", "tie") for j in judgments)
        assert judge.endpoint_fallbacks() == ["reasoning"]
        bodies = [e["body"] for e in server.state.log]
        assert len(bodies) == 4  # one cut-off answer, then one request per judgment
        assert bodies[0]["max_tokens"] == 300 and "temperature" in bodies[0]
        for body in bodies[1:]:
            assert (
                body["max_completion_tokens"] > 2000 and "temperature" not in body and "logprobs" not in body
            )


def test_default_query_and_headers_reach_every_request():
    """Azure OpenAI's legacy endpoint wants ?api-version=... and an api-key header."""
    from labeler.judge_config import JudgeConfig

    with StandinServer() as server:
        seen: list[httpx.Request] = []
        config = JudgeConfig(
            judge="openai",
            model="gpt-4o-mini",
            base_url=server.base_url,
            default_query={"api-version": "2024-10-21"},
            default_header={"api-key": "azure-key"},
        )
        judge = config.build()
        assert isinstance(judge, OpenAIJudge)

        async def go():
            client = judge._client()
            client._client.event_hooks["request"].append(lambda r: _record(seen, r))
            try:
                return await judge.judge(_request())
            finally:
                await judge.aclose()

        assert asyncio.run(go()).label in ("A", "B", "tie")
        assert seen and all(
            r.url.params["api-version"] == "2024-10-21" and r.headers["api-key"] == "azure-key" for r in seen
        )
        assert "api-version" not in json.dumps(judge.fingerprint())


async def _record(seen: list, request: httpx.Request) -> None:
    seen.append(request)
