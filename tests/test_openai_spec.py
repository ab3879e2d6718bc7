"""Every request body the openai judge can emit, checked against a specification we did not write:
the installed openai SDK's own request parameter types (``CompletionCreateParamsNonStreaming``,
``BatchCreateParams``), validated with pydantic, plus a key check (a TypedDict ignores unknown keys,
so a misspelt parameter would otherwise pass)."""

from __future__ import annotations

import asyncio
import json
import typing

import numpy as np
import pytest
from openai.types import BatchCreateParams
from openai.types.chat import ChatCompletionContentPartParam, ChatCompletionMessageParam
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter

from labeler.cache import JudgmentCache
from labeler.engine import Engine, EngineConfig
from labeler.fileio import read_lines
from labeler.judges.models_table import MODELS, RESPONSES_ONLY
from labeler.judges.openai_api import OpenAIJudge
from labeler.runners.batch_api_files import write_batch_files
from labeler.schemas import ManifestEntry, SegmentRequest
from tests.conftest import textured_frames

CHAT = TypeAdapter(CompletionCreateParamsNonStreaming)
CHAT_KEYS = set(typing.get_type_hints(CompletionCreateParamsNonStreaming))
# ``messages`` and ``content`` are Iterables in the SDK, which pydantic validates lazily (not at
# all here): each message and part is validated on its own.
MESSAGE = TypeAdapter(ChatCompletionMessageParam)
PART = TypeAdapter(ChatCompletionContentPartParam)
#: What vLLM accepts on top of OpenAI's parameters (vllm/entrypoints/openai/protocol.py), sent only
#: through --extra-body.
VLLM_EXTRA = {"structured_outputs", "top_k", "repetition_penalty"}


def spec_check(body: dict, extra_keys: set[str] = frozenset()) -> None:
    CHAT.validate_python(body)
    unknown = set(body) - CHAT_KEYS - set(extra_keys)
    assert not unknown, f"parameters the OpenAI API does not define: {unknown}"
    for message in body["messages"]:
        MESSAGE.validate_python(message)
        content = message["content"]
        for part in content if isinstance(content, list) else []:
            PART.validate_python(part)
            if part["type"] == "image_url":
                assert set(part["image_url"]) <= {"url", "detail"}
                assert part["image_url"]["detail"] in ("low", "high", "auto")


@pytest.fixture(scope="module")
def request_pair() -> SegmentRequest:
    frames = textured_frames(3, h=36, w=64)
    return SegmentRequest(
        prompt="a fox", frames_first=frames, frames_second=frames[::-1].copy(), start_s=0, end_s=1
    )


MODEL_NAMES = [
    *(m for m in MODELS if m not in RESPONSES_ONLY),
    "gpt-4o-2024-08-06",
    "Qwen/Qwen2.5-VL-7B-Instruct",
]


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("layout", ["separate", "side-by-side"])
@pytest.mark.parametrize("order", ["label-first", "rationale-first"])
def test_every_family_and_layout_emits_a_valid_chat_body(model, layout, order, request_pair):
    body = OpenAIJudge(model, api_key="k", layout=layout, answer_order=order).build_body(request_pair)
    spec_check(body)
    schema = body["response_format"]["json_schema"]
    assert schema["strict"] is True and next(iter(schema["schema"]["properties"])) == order.split("-")[0]


@pytest.mark.parametrize(
    ("model", "effort"),
    [("o3", "high"), ("gpt-5", "minimal"), ("gpt-5.1", "none"), ("gpt-5.1", "high"), ("gpt-5.2", "xhigh"),
     ("my-reasoner", "low")],
)  # fmt: skip
def test_reasoning_efforts_emit_valid_bodies(model, effort, request_pair):
    body = OpenAIJudge(model, api_key="k", reasoning_effort=effort).build_body(request_pair)
    spec_check(body)
    assert body["reasoning_effort"] == effort and "max_tokens" not in body


def test_fallback_and_option_variants_stay_valid(request_pair):
    judge = OpenAIJudge("gpt-4o", api_key="k", logprobs=False, strict_schema=False, detail="high")
    spec_check(judge.build_body(request_pair))
    judge.fallbacks.update(max_tokens="x", temperature="x", logprobs="x", response_format="x")
    spec_check(judge.build_body(request_pair))
    vllm = OpenAIJudge("Qwen/Qwen2.5-VL-7B-Instruct", extra_body={"top_k": 20, "repetition_penalty": 1.05})
    spec_check(vllm.build_body(request_pair), VLLM_EXTRA)


def test_batch_lines_are_valid_batch_requests(tmp_path, request_pair):
    """Batch input lines: each body is a valid chat body, and the batch they make is a valid
    BatchCreateParams (endpoint, window)."""
    from labeler.media import video

    for name in ("a", "b"):
        video.write_video(tmp_path / f"{name}.mp4", textured_frames(16, h=36, w=64), 8.0)
    entry = ManifestEntry(
        pair_id="p", prompt="fox", video_a=str(tmp_path / "a.mp4"), video_b=str(tmp_path / "b.mp4")
    )
    judge = OpenAIJudge("gpt-4o-mini", api_key="k", layout="side-by-side")
    engine = Engine(judge, EngineConfig(frames_per_segment=3), JudgmentCache(tmp_path / "cache"))
    files = asyncio.run(write_batch_files([entry], engine, tmp_path / "job"))
    lines = [json.loads(x) for f in files for x in read_lines(f.path)]
    assert len(lines) == 4  # 2 segments x 2 orders
    for line in lines:
        assert set(line) == {"custom_id", "method", "url", "body"} and line["method"] == "POST"
        spec_check(line["body"])
    TypeAdapter(BatchCreateParams).validate_python(
        {"input_file_id": "file-x", "endpoint": lines[0]["url"], "completion_window": "24h"}
    )
    engine.cache.close()


def test_the_spec_check_catches_what_it_should(request_pair):
    body = OpenAIJudge("gpt-4o", api_key="k").build_body(request_pair)
    with pytest.raises(AssertionError, match="max_token"):
        spec_check({**body, "max_token": 3})
    with pytest.raises(ValueError):
        spec_check({**body, "reasoning_effort": "extreme"})
    bad = json.loads(json.dumps(body))
    bad["messages"][1]["content"][1] = {"type": "image", "image": np.zeros(1).tolist()}
    with pytest.raises(ValueError):
        spec_check(bad)
