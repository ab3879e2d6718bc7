"""The openai judge against vLLM's own code (tests/vllm_real.py): its request model, its exception
handlers, its ``vllm serve`` argument parser. Skipped with a loud reason where vLLM is not
installed; CI installs it (.ci/run) and requires these to run."""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
from pathlib import Path

import pytest

from labeler.judges.models_table import MODELS, RESPONSES_ONLY
from labeler.judges.openai_api import OpenAIJudge
from labeler.schemas import JudgeParseError, SegmentRequest
from labeler.standin import StandinServer
from labeler.standin.behaviour import StandinConfig, answer_tokens, build_completion, schema_label_first
from tests.conftest import textured_frames
from tests.vllm_real import Served, require_vllm, serve_parser, vllm_app

ROOT = Path(__file__).resolve().parents[1]
QWEN = "Qwen/Qwen2.5-VL-7B-Instruct"
#: The server flag the docs give against the whitespace loop, and the one they used to give.
WORKING_FLAG = '{"backend": "xgrammar", "disable_any_whitespace": true}'
BROKEN_FLAG = '{"disable_any_whitespace": true}'


@pytest.fixture(scope="module")
def vllm():
    return require_vllm()


@pytest.fixture(scope="module")
def chat_request_model(vllm):
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest


@pytest.fixture(scope="module")
def request_pair() -> SegmentRequest:
    frames = textured_frames(3, h=36, w=64)
    return SegmentRequest(
        prompt="a fox", frames_first=frames, frames_second=frames[::-1].copy(), start_s=0, end_s=1
    )


def _bodies(request: SegmentRequest):
    """Every kind of body the judge sends: each model family, layout, answer order, and each
    fallback state (what a refused parameter leaves)."""
    for model in [*(m for m in MODELS if m not in RESPONSES_ONLY), QWEN]:
        for layout in ("separate", "side-by-side"):
            for order in ("label-first", "rationale-first"):
                judge = OpenAIJudge(model, api_key="k", layout=layout, answer_order=order)
                yield f"{model}/{layout}/{order}", judge.build_body(request)
    for fallbacks in ({"logprobs": "x"}, {"strict": "x"}, {"response_format": "x"}, {"max_tokens": "x"},
                      {"temperature": "x", "logprobs": "x", "response_format": "x"}):  # fmt: skip
        judge = OpenAIJudge(QWEN, detail="high", strict_schema=False)
        judge.fallbacks.update(fallbacks)
        yield f"fallbacks {sorted(fallbacks)}", judge.build_body(request)
    yield "reasoning alias", OpenAIJudge("my-reasoner", reasoning_effort="low").build_body(request)


def test_every_body_the_judge_sends_is_a_valid_vllm_request(chat_request_model, request_pair):
    checked = 0
    for name, body in _bodies(request_pair):
        request = chat_request_model.model_validate(body)
        params = request.to_sampling_params(max_tokens=512, default_sampling_params={})
        if "response_format" in body:
            # vLLM turns the json_schema into its grammar constraint: the answer schema is enforced.
            schema = body["response_format"]["json_schema"]["schema"]
            assert params.structured_outputs.json == schema, name
        if body.get("logprobs"):
            assert params.logprobs == body.get("top_logprobs", 0), name
        checked += 1
    assert checked >= 4 * (len(MODELS) - len(RESPONSES_ONLY))


def test_the_old_per_request_whitespace_option_is_refused_by_vllm(chat_request_model, request_pair):
    """What the README used to advise: vLLM 0.34 refuses the body, so every request would fail."""
    from vllm.exceptions import VLLMValidationError

    judge = OpenAIJudge(QWEN, extra_body={"structured_outputs": {"disable_any_whitespace": True}})
    with pytest.raises(VLLMValidationError, match="none are specified"):
        chat_request_model.model_validate(judge.build_body(request_pair))


def _vllm_answer(body: dict) -> dict:
    """The stand-in's answer to ``body`` (its text and logprobs, vLLM's grammar masking)."""
    tokens = answer_tokens("A is sharper.", "A", label_first=schema_label_first(body))
    top = int(body.get("top_logprobs") or 0) if body.get("logprobs") else None
    probs = {"A": 0.8, "B": 0.15, "tie": 0.05}
    return build_completion(body["model"], "".join(tokens), tokens, probs, top, 100, grammar_masked=True)


@pytest.fixture(scope="module")
def vllm_server(vllm):
    with Served(vllm_app(_vllm_answer)) as served:
        yield served


def _judge(judge: OpenAIJudge, request: SegmentRequest):
    async def go():
        try:
            return await judge.judge(request)
        finally:
            await judge.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("order", ["label-first", "rationale-first"])
def test_the_judge_labels_through_vllms_request_model_and_handlers(vllm_server, request_pair, order):
    judge = OpenAIJudge(QWEN, base_url=vllm_server.base_url, answer_order=order)
    judgment = _judge(judge, request_pair)
    assert judgment.label == "A" and judgment.prob_source == "logprobs"
    assert judgment.p_a == pytest.approx(0.8, abs=1e-6) and not judge.fallbacks
    sent = vllm_server._server.config.app.state.requests[-1]
    assert sent.response_format.type == "json_schema" and sent.logprobs


def test_vllms_handlers_answer_a_bad_body_with_a_400_the_judge_reports(vllm_server, request_pair):
    judge = OpenAIJudge(
        QWEN,
        base_url=vllm_server.base_url,
        extra_body={"structured_outputs": {"disable_any_whitespace": True}},
    )
    from labeler.schemas import FatalJudgeError

    with pytest.raises(FatalJudgeError, match="none are specified"):
        _judge(judge, request_pair)


def test_standin_vllm_flavour_answers_as_vllm_does(vllm_server, request_pair):
    """The stand-in's vllm flavour and vLLM's own front end agree on every body: same status, and
    the stand-in's answers are valid vLLM ChatCompletionResponses."""
    import httpx
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse

    base = OpenAIJudge(QWEN).build_body(request_pair)
    variants = {
        "judge body": base,
        "no constraint": {**base, "structured_outputs": {"disable_any_whitespace": True}},
        "two constraints": {**base, "structured_outputs": {"regex": "a", "choice": ["a"]}},
        "grammar and choice": {**base, "structured_outputs": {"grammar": "root ::= 'a'", "choice": ["a"]}},
        "one constraint": {**base, "structured_outputs": {"choice": ["A", "B", "tie"]}},
        "the same constraint": {**base, "structured_outputs": {"json": {"type": "object"}}},
        "a constraint alone": {
            **{k: v for k, v in base.items() if k != "response_format"},
            "structured_outputs": {"choice": ["A", "B", "tie"]},
        },
    }
    with StandinServer(flavour="vllm") as standin:
        for name, body in variants.items():
            ours = httpx.post(standin.base_url + "/chat/completions", json=body, timeout=30)
            theirs = httpx.post(vllm_server.base_url + "/chat/completions", json=body, timeout=30)
            assert ours.status_code == theirs.status_code, (name, ours.text, theirs.text)
            if ours.status_code == 200:
                ChatCompletionResponse.model_validate(ours.json())
            else:
                head = theirs.json()["error"]["message"][:40]
                assert ours.json()["error"]["message"].startswith(head), name


# --------------------------------------------------------------------------- vllm serve flags


def _documented_serve_commands() -> list[tuple[str, list[str]]]:
    """Every ``vllm serve`` command line in the README and docs/, continuation lines joined."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8").replace("\\\n", " ")
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("vllm serve "):
                argv = shlex.split(line.split("#")[0] if " #" in line else line)
                found.append((f"{path.name}: {line[:60]}", argv[2:]))
    return found


def test_every_documented_vllm_serve_command_parses_with_vllms_own_parser(vllm):
    from vllm.engine.arg_utils import AsyncEngineArgs

    commands = _documented_serve_commands()
    assert len(commands) >= 3, commands
    assert any("--structured-outputs-config" in argv for _, argv in commands)
    parser = serve_parser()
    for where, argv in commands:
        args = parser.parse_args(argv)
        AsyncEngineArgs.from_cli_args(args)  # the engine's own checks of the parsed values
        flag = next((argv[i + 1] for i, a in enumerate(argv) if a == "--structured-outputs-config"), None)
        if flag is not None:
            assert args.structured_outputs_config.disable_any_whitespace, where


def test_the_old_server_flag_stops_vllm_serve_and_the_standin_alike(vllm):
    parser = serve_parser()
    with pytest.raises(argparse.ArgumentError, match="only supported for xgrammar and guidance"):
        parser.parse_args([QWEN, "--structured-outputs-config", BROKEN_FLAG])
    assert parser.parse_args([QWEN, "--structured-outputs-config", WORKING_FLAG]).structured_outputs_config
    with pytest.raises(ValueError, match="only supported for xgrammar and guidance"):
        StandinConfig(flavour="vllm", structured_outputs_config={"disable_any_whitespace": True})


def test_the_documented_server_flag_ends_the_standins_whitespace_loop(request_pair):
    """The stand-in loops on whitespace like xgrammar with Qwen until the server runs with the
    documented flag; the judge names the fix when it sees the loop."""
    import json

    with StandinServer(flavour="vllm", whitespace_loop=True) as server:
        judge = OpenAIJudge(QWEN, base_url=server.base_url, max_parse_retries=0, max_tokens=40)
        with pytest.raises(JudgeParseError, match=re.escape(WORKING_FLAG)):
            _judge(judge, request_pair)
    with StandinServer(
        flavour="vllm", whitespace_loop=True, structured_outputs_config=json.loads(WORKING_FLAG)
    ) as server:
        judge = OpenAIJudge(QWEN, base_url=server.base_url, max_parse_retries=0, max_tokens=40)
        assert _judge(judge, request_pair).label in ("A", "B", "tie")
