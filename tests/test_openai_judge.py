"""labeler.judges.openai_api.OpenAIJudge against the real stand-in server on loopback (no mocks)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import socket
import time

import httpx
import openai
import pytest

from labeler.judges.base import Judge
from labeler.judges.models_table import REASONING_BUDGET
from labeler.judges.openai_api import OpenAIJudge
from labeler.judges.openai_errors import retry_after, status_error
from labeler.judges.parsing import answer_json_schema
from labeler.judges.pricing import chat_input_tokens
from labeler.schemas import FatalJudgeError, JudgeParseError, SegmentRequest, TransientJudgeError
from labeler.standin import canonical_hash
from labeler.standin.behaviour import GARBAGE, answer_tokens, decide
from tests.conftest import textured_frames


@pytest.fixture
def request_pair() -> SegmentRequest:
    return SegmentRequest(
        prompt="a skier turns downhill",
        frames_first=textured_frames(4, 32, 48, seed=1),
        frames_second=textured_frames(4, 32, 48, seed=2),
        start_s=1.0,
        end_s=2.0,
        index=1,
        num_segments=3,
    )


def run(judge: OpenAIJudge, request: SegmentRequest):
    async def go():
        try:
            return await judge.judge(request)
        finally:
            await judge.aclose()

    return asyncio.run(go())


def _images(body: dict) -> list[dict]:
    return [
        p
        for m in body["messages"]
        if isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == "image_url"
    ]


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1"


def test_answer_is_parsed_with_logprob_probabilities_and_usage(standin, request_pair):
    standin.control(policy="first")
    judge = OpenAIJudge("gpt-4o-mini", base_url=standin.base_url)
    assert isinstance(judge, Judge)
    body = judge.build_body(request_pair)
    j = run(judge, request_pair)
    assert (j.label, j.prob_source, j.model) == ("A", "logprobs", "gpt-4o-mini")
    assert (j.p_a, j.p_b, j.p_tie) == pytest.approx((0.9, 0.02, 0.08))
    assert j.rationale == "Video A looks cleaner to me."
    assert json.loads(j.raw) == {"rationale": j.rationale, "label": "A"}
    assert j.input_tokens == chat_input_tokens(body["messages"], "gpt-4o-mini")[0]
    assert j.output_tokens == len(answer_tokens(j.rationale, "A"))
    # build_body is byte-for-byte the body that went over the wire.
    assert standin.stats()["answered_by_hash"] == {canonical_hash(body): 1}


def test_probabilities_follow_the_servers_label_distribution(standin, request_pair):
    judge = OpenAIJudge("standin-vlm", base_url=standin.base_url)
    urls = [p["image_url"]["url"] for p in _images(judge.build_body(request_pair))]
    expected, _ = decide("hash", urls)
    j = run(judge, request_pair)
    assert {"A": j.p_a, "B": j.p_b, "tie": j.p_tie} == pytest.approx(expected)
    assert j.label == max(expected, key=expected.get)
    assert j.p_a + j.p_b + j.p_tie == pytest.approx(1.0)


def test_without_logprobs_the_answer_is_a_one_hot_vote(standin, request_pair):
    standin.control(logprobs=False, policy="second")
    j = run(OpenAIJudge("standin-vlm", base_url=standin.base_url), request_pair)
    assert (j.label, j.prob_source, j.p_a, j.p_b, j.p_tie) == ("B", "vote", 0.0, 1.0, 0.0)


def test_unparseable_answer_is_reasked_with_the_error(standin, request_pair):
    standin.control(faults=[{"garbage": True}], policy="tie")
    judge = OpenAIJudge("standin-vlm", base_url=standin.base_url)
    first_messages = judge.build_body(request_pair)["messages"]
    j = run(judge, request_pair)
    assert j.label == "tie"
    log = standin.requests(10)
    assert [e["status"] for e in log] == [200, 200]
    reask = log[1]["body"]["messages"]
    assert reask[-2] == {"role": "assistant", "content": GARBAGE}
    assert reask[-1]["role"] == "user"
    assert "no JSON object was found" in reask[-1]["content"]  # the parse error, quoted
    assert "Your previous answer could not be used" in reask[-1]["content"]
    # Usage is the sum over both asks.
    followed = [*first_messages, reask[-2], reask[-1]]
    expected_in = (
        chat_input_tokens(first_messages, "standin-vlm")[0] + chat_input_tokens(followed, "standin-vlm")[0]
    )
    assert j.input_tokens == expected_in
    assert j.output_tokens == len(GARBAGE.split()) + len(answer_tokens(j.rationale, "tie"))


@pytest.mark.parametrize("retries", [0, 2])
def test_never_parseable_raises_after_the_retry_limit(standin, request_pair, retries):
    standin.control(policy="garbage")
    judge = OpenAIJudge("standin-vlm", base_url=standin.base_url, max_parse_retries=retries)
    with pytest.raises(JudgeParseError, match=f"after {retries + 1} attempts") as info:
        run(judge, request_pair)
    assert info.value.raw == GARBAGE
    assert standin.stats()["requests_total"] == retries + 1


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [
        ({"status": 429, "retry_after": 0.05}, 0.05),
        ({"status": 429, "retry_after_ms": 250}, 0.25),
        ({"status": 429}, None),
    ],
)
def test_rate_limit_is_transient_and_carries_retry_after(standin, request_pair, fault, retry_after):
    standin.control(faults=[fault])
    with pytest.raises(TransientJudgeError, match="rate limited") as info:
        run(OpenAIJudge("standin-vlm", base_url=standin.base_url), request_pair)
    assert info.value.status == 429
    assert info.value.retry_after == (pytest.approx(retry_after) if retry_after is not None else None)
    assert standin.stats()["requests_total"] == 1  # the client itself never retries


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_transient(standin, request_pair, status):
    standin.control(faults=[{"status": status}])
    with pytest.raises(TransientJudgeError, match=f"server error \\({status}\\)") as info:
        run(OpenAIJudge("standin-vlm", base_url=standin.base_url), request_pair)
    assert info.value.status == status


def test_a_hang_past_the_timeout_is_transient(standin, request_pair):
    standin.control(faults=[{"hang": 1.5}])
    with pytest.raises(TransientJudgeError, match=r"within 0\.3 s"):
        run(OpenAIJudge("standin-vlm", base_url=standin.base_url, timeout=0.3), request_pair)


def test_an_unreachable_server_is_transient(request_pair):
    with pytest.raises(TransientJudgeError, match="cannot reach"):
        run(OpenAIJudge("standin-vlm", base_url=_closed_port_url()), request_pair)


def test_bad_key_unknown_model_and_rejected_request_are_fatal(standin, request_pair):
    standin.control(api_key="sk-right")
    with pytest.raises(FatalJudgeError, match=r"HTTP 401 \(check the API key\): Incorrect API key"):
        run(OpenAIJudge("standin-vlm", base_url=standin.base_url, api_key="sk-wrong"), request_pair)
    standin.control(api_key=None, models=["other-model"])
    with pytest.raises(FatalJudgeError, match=r"HTTP 404 \(check the model name\)"):
        run(OpenAIJudge("standin-vlm", base_url=standin.base_url), request_pair)
    standin.control(models=[], faults=[{"status": 400, "message": "image too large"}])
    with pytest.raises(FatalJudgeError, match=r"rejected the request \(400\): image too large"):
        run(OpenAIJudge("standin-vlm", base_url=standin.base_url), request_pair)
    assert standin.stats()["by_status"]["400"] == 1  # a 400 that names no known parameter is not retried


def test_openai_proper_without_a_key_is_fatal_before_any_request(monkeypatch, request_pair):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    judge = OpenAIJudge("gpt-4o-mini")
    assert judge.build_body(request_pair)["model"] == "gpt-4o-mini"  # dry runs need no key
    with pytest.raises(FatalJudgeError, match="OPENAI_API_KEY"):
        run(judge, request_pair)


def test_refused_logprobs_fall_back_once_and_are_remembered(standin, request_pair):
    standin.control(supports_logprobs=False, policy="first")
    judge = OpenAIJudge("standin-vlm", base_url=standin.base_url)
    fingerprint = judge.fingerprint()
    j = run(judge, request_pair)
    assert (j.label, j.prob_source) == ("A", "vote")
    assert "logprobs" in judge.fallbacks["logprobs"]
    assert standin.stats()["by_status"] == {"400": 1, "200": 1}
    assert "logprobs" not in judge.build_body(request_pair)
    run(judge, request_pair)
    assert standin.stats()["by_status"] == {"400": 1, "200": 2}  # no second refusal
    assert judge.fingerprint() == fingerprint  # the cache key does not drift mid-run


def test_refused_response_format_steps_down_from_strict_then_drops_it(standin, request_pair):
    standin.control(supports_response_format=False, policy="second")
    judge = OpenAIJudge("standin-vlm", base_url=standin.base_url, strict_schema=True)
    assert judge.build_body(request_pair)["response_format"]["json_schema"]["strict"] is True
    assert run(judge, request_pair).label == "B"
    assert set(judge.fallbacks) == {"strict", "response_format"}
    assert standin.stats()["by_status"] == {"400": 2, "200": 1}
    assert "response_format" not in judge.build_body(request_pair)


@pytest.mark.parametrize(("layout", "images"), [("separate", 8), ("side-by-side", 4)])
def test_layouts_send_the_right_number_of_images(standin, request_pair, layout, images):
    judge = OpenAIJudge("standin-vlm", base_url=standin.base_url, layout=layout, detail="high")
    parts = _images(judge.build_body(request_pair))
    assert len(parts) == images
    assert all(
        p["image_url"]["detail"] == "high" and p["image_url"]["url"].startswith("data:image/jpeg")
        for p in parts
    )
    run(judge, request_pair)
    assert standin.requests(1)[0]["images"] == images
    estimate = judge.estimate(request_pair)
    assert estimate.images == images


def test_request_body_settings(request_pair):
    openai_judge = OpenAIJudge("gpt-4o", api_key="sk-test", base_url="https://api.openai.com/v1")
    body = openai_judge.build_body(request_pair)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "segment_judgment",
            "schema": answer_json_schema("label-first"),
            "strict": True,
        },
    }
    assert list(body["response_format"]["json_schema"]["schema"]["properties"]) == ["label", "rationale"]
    assert (body["temperature"], body["max_tokens"], body["logprobs"], body["top_logprobs"]) == (
        0.0,
        300,
        True,
        5,
    )
    assert body["messages"][0]["role"] == "system" and isinstance(body["messages"][0]["content"], str)
    assert _images(body)[0]["image_url"]["detail"] == "low"
    local = OpenAIJudge("qwen", base_url="http://127.0.0.1:8000/v1", extra_body={"top_k": 1}).build_body(
        request_pair
    )
    # strict: true everywhere by default (a proxy or gateway in front of OpenAI must not lose it).
    assert local["response_format"]["json_schema"]["strict"] is True and local["top_k"] == 1
    o3 = OpenAIJudge("o3", api_key="k", reasoning_effort="low").build_body(request_pair)
    assert o3["max_completion_tokens"] == 300 + REASONING_BUDGET["low"] and o3["reasoning_effort"] == "low"
    assert not {"temperature", "max_tokens", "logprobs", "top_logprobs"} & set(o3)


def test_extra_body_reaches_the_server(standin, request_pair):
    run(
        OpenAIJudge("standin-vlm", base_url=standin.base_url, extra_body={"top_k": 1, "seed": 7}),
        request_pair,
    )
    body = standin.requests(1)[0]["body"]
    assert (body["top_k"], body["seed"]) == (1, 7)


def test_fingerprint_ignores_the_url_and_tracks_what_changes_answers():
    a = OpenAIJudge("qwen", base_url="http://host-a:8000/v1")
    assert a.fingerprint() == OpenAIJudge("qwen", base_url="http://host-b:9000/v1").fingerprint()
    assert "base_url" not in json.dumps(a.fingerprint())
    for change in ({"prompt": "artifacts_motion_text"}, {"layout": "side-by-side"}, {"detail": "high"},
                   {"jpeg_quality": 70}, {"temperature": 0.7}, {"max_tokens": 100}, {"logprobs": False},
                   {"extra_body": {"top_k": 1}}):  # fmt: skip
        assert (
            OpenAIJudge("qwen", base_url="http://host-a:8000/v1", **change).fingerprint() != a.fingerprint()
        )
    assert a.fingerprint()["prompt_id"] == a.prompt_id and a.prompt_id.startswith("conservative@")


def test_parse_body_reads_batch_outputs_and_rejects_unusable_ones(request_pair):
    from labeler.standin.behaviour import build_completion

    judge = OpenAIJudge("standin-vlm", base_url="http://127.0.0.1:1/v1")
    tokens = answer_tokens("B is sharper", "B")
    good = build_completion("standin-vlm", "".join(tokens), tokens, {"A": 0.1, "B": 0.7, "tie": 0.2}, 3, 1234)
    j = judge.parse_body(good)
    assert (j.label, j.input_tokens, j.output_tokens, j.prob_source) == ("B", 1234, len(tokens), "logprobs")
    assert j.p_b == pytest.approx(0.7)
    bad = build_completion("standin-vlm", GARBAGE, GARBAGE.split(), None, None, 10)
    with pytest.raises(JudgeParseError, match="no JSON object"):
        judge.parse_body(bad)
    with pytest.raises(JudgeParseError, match="no choices"):
        judge.parse_body({"choices": []})


def test_estimate_matches_the_token_count_of_the_real_body(request_pair):
    for layout in ("separate", "side-by-side"):
        for detail in ("low", "high"):
            judge = OpenAIJudge("gpt-4o", api_key="k", layout=layout, detail=detail)
            est = judge.estimate(request_pair)
            assert (est.input_tokens, est.images) == chat_input_tokens(
                judge.build_body(request_pair)["messages"], "gpt-4o"
            )
            assert est.output_tokens == 60 and est.extra["cost_usd"] > est.extra["batch_cost_usd"] > 0


def test_ready_reports_whether_the_server_answers(standin):
    async def check(judge: OpenAIJudge) -> bool:
        try:
            return await judge.ready()
        finally:
            await judge.aclose()

    assert asyncio.run(check(OpenAIJudge("standin-vlm", base_url=standin.base_url))) is True
    assert asyncio.run(check(OpenAIJudge("standin-vlm", base_url=_closed_port_url()))) is False


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="layout"):
        OpenAIJudge("m", layout="grid")
    with pytest.raises(ValueError, match="detail"):
        OpenAIJudge("m", detail="ultra")
    with pytest.raises(ValueError, match="unknown prompt"):
        OpenAIJudge("m", prompt="nope")


def test_retry_after_reads_milliseconds_seconds_and_http_dates():
    assert retry_after(None) is None and retry_after(httpx.Headers()) is None
    assert retry_after(httpx.Headers({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    assert retry_after(httpx.Headers({"retry-after-ms": "soon", "retry-after": "9"})) == 9.0
    assert retry_after(httpx.Headers({"retry-after": "-3"})) == 0.0
    assert retry_after(httpx.Headers({"retry-after": "whenever"})) is None
    future = email.utils.formatdate(time.time() + 3600, usegmt=True)
    assert 3000 < retry_after(httpx.Headers({"retry-after": future})) <= 3600
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    assert retry_after(httpx.Headers({"retry-after": past})) == 0.0


@pytest.mark.parametrize(
    ("status", "kind", "text"),
    [
        (408, TransientJudgeError, "server error (408): slow"),
        (409, TransientJudgeError, "server error (409): slow"),
        (403, FatalJudgeError, "m at u: HTTP 403 (check the API key): slow"),
        (422, FatalJudgeError, "m at u: HTTP 422: slow"),
    ],
)
def test_status_errors_map_to_transient_or_fatal(status, kind, text):
    response = httpx.Response(
        status, headers={"retry-after": "2"}, request=httpx.Request("POST", "http://u/v1/chat/completions")
    )
    exc = openai.APIStatusError("fallback", response=response, body={"error": {"message": "slow"}})
    error = status_error(exc, "m at u")
    assert type(error) is kind and str(error) == text
    if kind is TransientJudgeError:
        assert (error.status, error.retry_after) == (status, 2.0)
