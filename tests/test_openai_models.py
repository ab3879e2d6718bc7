"""Model capabilities as data (labeler.judges.models_table): prices per exact family, reasoning
rules, the completion budget, and the options that change the request (issue 14, items 4-6, 9-11)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from labeler.judges.composite import plan_composite
from labeler.judges.models_table import REASONING_BUDGET, TABLE_AS_OF, TABLE_SOURCES, lookup
from labeler.judges.openai_api import OpenAIJudge
from labeler.judges.openai_request import parse_price
from labeler.judges.pricing import estimate_cost
from labeler.media.images import data_uri_bytes, image_size
from labeler.schemas import SegmentRequest
from tests.conftest import textured_frames

REPO = Path(__file__).resolve().parents[1]
M = 1_000_000


def request(h: int = 252, w: int = 448, k: int = 2) -> SegmentRequest:
    frames = textured_frames(k, h=h, w=w)
    return SegmentRequest(prompt="a fox", frames_first=frames, frames_second=frames, start_s=0, end_s=1)


# --------------------------------------------------------------------------- prices (item 9)


@pytest.mark.parametrize(
    ("model", "price_in", "price_out"),
    [
        # The mispricings: a longer name is its own family, never its prefix's.
        ("gpt-4.1-nano", 0.10, 0.40), ("gpt-4.1", 2.00, 8.00), ("gpt-5-nano", 0.05, 0.40),
        ("gpt-5", 1.25, 10.00), ("o3-pro", 20.00, 80.00), ("o3", 2.00, 8.00),
        ("gpt-5-pro", 15.00, 120.00), ("gpt-4o-2024-05-13", 5.00, 15.00), ("gpt-4o-2024-08-06", 2.50, 10.00),
        # Previously unpriced families.
        ("o1", 15.00, 60.00), ("gpt-5.1", 1.25, 10.00), ("gpt-5.2", 1.75, 14.00), ("gpt-4.5-preview", 75.00, 150.00),
        ("openai/gpt-4o-mini", 0.15, 0.60),
        # Released since 2025-12, from litellm's model_prices_and_context_window.json (2026-12-04).
        ("gpt-5.4", 2.50, 15.00), ("gpt-5.4-2026-03-05", 2.50, 15.00), ("gpt-5.4-mini", 0.75, 4.50),
        ("gpt-5.4-nano", 0.20, 1.25), ("gpt-5.5", 5.00, 30.00), ("gpt-5.5-2026-04-23", 5.00, 30.00),
    ],
)  # fmt: skip
def test_each_family_has_its_own_price(model, price_in, price_out):
    assert estimate_cost(model, M, 0) == pytest.approx(price_in)
    assert estimate_cost(model, 0, M) == pytest.approx(price_out)
    assert estimate_cost(model, M, M, batch=True) == pytest.approx((price_in + price_out) / 2)


@pytest.mark.parametrize(
    "model", ["gpt-4.1-nano-mystery", "gpt-5-codex", "o3-deep-research", "Qwen/Qwen2.5-VL-7B", "gpt-6"]
)
def test_names_outside_the_table_have_no_price(model):
    assert lookup(model) is None and estimate_cost(model, M, M) is None
    assert estimate_cost(model, M, M, price=(1.0, 2.0)) == pytest.approx(3.0)


def test_the_table_is_dated_and_sourced():
    assert TABLE_AS_OF >= "2026-12-04" and all(
        s.startswith(("https://platform.openai.com/", "https://github.com/BerriAI/litellm/"))
        for s in TABLE_SOURCES
    )


@pytest.mark.parametrize(
    ("model", "cached"),
    [("gpt-5.1", 0.125), ("gpt-5.2", 0.175), ("gpt-5.4", 0.25), ("gpt-5.4-mini", 0.075),
     ("gpt-5.4-nano", 0.02), ("gpt-5.5", 0.50), ("gpt-5.5-pro", 3.00), ("gpt-5.2-pro", None)],
)  # fmt: skip
def test_cached_input_rates_of_the_gpt5x_families(model, cached):
    info = lookup(model)
    assert info is not None and info.cached_input_usd == cached


def test_parse_price_accepts_two_finite_non_negative_numbers():
    assert parse_price("0.15,0.6") == (0.15, 0.6)
    for bad in ("1", "1,2,3", "a,b", "nan,1", "inf,1", "-1,2", ""):
        with pytest.raises(ValueError, match="IN,OUT"):
            parse_price(bad)


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "labeler.batch",
        "--demo",
        "/nonexistent-demo-dir",
        "--judge",
        "openai",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)


def test_max_cost_on_an_unpriced_model_is_refused_unless_priced():
    proc = _cli("--model", "Qwen/Qwen2.5-VL-7B", "--base-url", "http://127.0.0.1:9/v1", "--max-cost", "5")
    assert proc.returncode == 2 and "--price IN,OUT" in proc.stderr
    for bad in ("nan", "-1", "inf"):
        proc = _cli("--model", "gpt-4o", "--max-cost", bad)
        assert proc.returncode == 2 and "--max-cost must be a finite amount of USD" in proc.stderr
    proc = _cli("--model", "m", "--price", "1,2,3")
    assert proc.returncode == 2 and "IN,OUT" in proc.stderr


def test_price_option_prices_the_judge():
    judge = OpenAIJudge("Qwen/Qwen2.5-VL-7B", base_url="http://127.0.0.1:9/v1", price=(0.5, 1.5))
    assert judge.cost_usd(M, M) == pytest.approx(2.0) and judge.cost_usd(M, M, batch=True) == pytest.approx(
        1.0
    )
    assert OpenAIJudge("Qwen/Qwen2.5-VL-7B", base_url="http://127.0.0.1:9/v1").cost_usd(M, M) is None


# --------------------------------------------------------------------------- reasoning (item 5)


def test_gpt_5_1_at_effort_none_keeps_temperature_and_logprobs():
    body = OpenAIJudge("gpt-5.1", api_key="k").build_body(request())
    assert body["reasoning_effort"] == "none" and body["temperature"] == 0.0 and body["logprobs"] is True
    assert body["max_completion_tokens"] == 300  # no thinking at effort none
    high = OpenAIJudge("gpt-5.1", api_key="k", reasoning_effort="high").build_body(request())
    assert "temperature" not in high and "logprobs" not in high
    assert high["max_completion_tokens"] == 300 + REASONING_BUDGET["high"]


def test_reasoning_models_get_room_to_think():
    for model in ("o3", "gpt-5", "gpt-5-mini", "o4-mini"):
        body = OpenAIJudge(model, api_key="k").build_body(request())
        assert body["max_completion_tokens"] == 300 + REASONING_BUDGET["medium"], model
        assert body["reasoning_effort"] == "medium" and "temperature" not in body
    # A reasoning model outside the table: --reasoning-effort marks it and reserves the budget.
    unknown = OpenAIJudge("my-gateway/reasoner", base_url="http://g/v1", reasoning_effort="low")
    body = unknown.build_body(request())
    assert body["max_completion_tokens"] == 300 + REASONING_BUDGET["low"] and "temperature" not in body
    chat = OpenAIJudge("gpt-4o", api_key="k").build_body(request())
    assert chat["max_tokens"] == 300 and "reasoning_effort" not in chat


def test_efforts_the_model_does_not_take_are_refused():
    with pytest.raises(ValueError, match="accepts reasoning efforts"):
        OpenAIJudge("o3", api_key="k", reasoning_effort="none")
    with pytest.raises(ValueError, match="not a reasoning model"):
        OpenAIJudge("gpt-4o", api_key="k", reasoning_effort="low")
    with pytest.raises(ValueError, match="must be one of"):
        OpenAIJudge("x", base_url="http://h/v1", reasoning_effort="max-ish")


def test_dry_run_estimate_states_reasoning_tokens():
    est = OpenAIJudge("o3", api_key="k").estimate(request())
    assert est.extra["reasoning_effort"] == "medium" and est.extra["reasoning_tokens"] > 0
    assert est.output_tokens == 60 + est.extra["reasoning_tokens"]
    assert OpenAIJudge("gpt-4o", api_key="k").estimate(request()).extra["reasoning_tokens"] == 0


# --------------------------------------------------------------------------- strict, extra body, order


def test_strict_by_default_and_no_strict_turns_it_off():
    for base_url in ("https://api.openai.com/v1", "https://my-proxy.example/v1", "http://127.0.0.1:8000/v1"):
        body = OpenAIJudge("gpt-4o", base_url=base_url, api_key="k").build_body(request())
        assert body["response_format"]["json_schema"]["strict"] is True
    off = OpenAIJudge("gpt-4o", api_key="k", strict_schema=False)
    assert off.build_body(request())["response_format"]["json_schema"]["strict"] is False
    assert off.fingerprint() != OpenAIJudge("gpt-4o", api_key="k").fingerprint()


def test_answer_order_changes_schema_prompt_and_cache_identity():
    first = OpenAIJudge("gpt-4o", api_key="k")
    second = OpenAIJudge("gpt-4o", api_key="k", answer_order="rationale-first")
    assert first.answer_order == "label-first" and second.answer_order == "rationale-first"
    assert first.fingerprint()["answer_order"] == "label-first" != second.fingerprint()["answer_order"]
    texts = [json.dumps(j.build_body(request())["messages"][1]["content"][-1]) for j in (first, second)]
    assert "the label first" in texts[0] and "the rationale first" in texts[1]


# --------------------------------------------------------------------------- detail low (item 6)


def test_low_detail_composites_fit_512_and_keep_the_most_pixels():
    # 448x252 frames: left-right would be 904 px wide (each video ~254 px after OpenAI's shrink);
    # stacked they make 448x512 and keep every pixel.
    plan = plan_composite(448, 252, 512)
    assert (plan.arrangement, plan.scale, plan.width, plan.height) == ("top-bottom", 1.0, 448, 512)
    portrait = plan_composite(252, 448, 512)  # portrait frames sit side by side
    assert portrait.arrangement == "left-right" and portrait.width <= 512
    square = plan_composite(448, 448, 512)
    assert max(square.width, square.height) <= 512 and square.scale < 1
    judge = OpenAIJudge("gpt-4o", api_key="k", layout="side-by-side", detail="low")
    body = judge.build_body(request())
    urls = [p["image_url"]["url"] for p in body["messages"][1]["content"] if p["type"] == "image_url"]
    assert all(image_size(data_uri_bytes(u)) == (448, 512) for u in urls)
    text = body["messages"][1]["content"][0]["text"]
    assert "Video A is at the top" in text
    frames = judge.estimate(request()).extra["frames"]
    assert "448x252 sent (top-bottom composite 448x512)" in frames and "448x252 seen" in frames
    high = OpenAIJudge("gpt-4o", api_key="k", layout="side-by-side", detail="high").build_body(request())
    url = next(p for p in high["messages"][1]["content"] if p["type"] == "image_url")["image_url"]["url"]
    assert image_size(data_uri_bytes(url)) == (904, 252)  # high detail keeps the historical layout


def test_separate_low_detail_frames_report_their_seen_size():
    judge = OpenAIJudge("gpt-4o", api_key="k", detail="low")
    assert (
        "832x480 decoded, 832x480 sent (separate images), 512x295 seen"
        in judge.estimate(request(h=480, w=832)).extra["frames"]
    )


def test_sharpness_standin_reads_stacked_composites(standin):
    """The stand-in's real judge splits a top-bottom composite at its stripe, so the sharper video
    still wins when the composite is stacked."""
    import asyncio

    from scipy.ndimage import gaussian_filter

    sharp = textured_frames(2, h=64, w=112)
    blurred = gaussian_filter(sharp.astype(np.float32), sigma=(0, 3, 3, 0)).round().astype(np.uint8)
    standin.control(policy="sharpness")
    judge = OpenAIJudge("standin-vlm", base_url=standin.base_url, layout="side-by-side", detail="low")
    req = SegmentRequest(prompt="p", frames_first=blurred, frames_second=sharp, start_s=0, end_s=1)

    async def ask():
        try:
            return await judge.judge(req)
        finally:
            await judge.aclose()

    j = asyncio.run(ask())
    assert j.label == "B" and "side-by-side" in j.rationale


def test_the_prompt_names_the_image_order_in_words():
    """vLLM without --interleave-mm-strings moves every image ahead of the text for string-content
    chat templates: captions alone would no longer say which image is which video."""
    separate = OpenAIJudge("m", base_url="http://h/v1").build_body(request(k=3))["messages"][1]["content"][0][
        "text"
    ]
    assert "Images 1 to 3 are Video A and images 4 to 6 are Video B, in time order." in separate
    composite = OpenAIJudge("m", base_url="http://h/v1", layout="side-by-side").build_body(request(k=3))
    assert "Images 1 to 3 are the time steps in order" in composite["messages"][1]["content"][0]["text"]


def test_each_cli_option_reaches_the_request():
    from labeler.batch import build_parser
    from labeler.cli_options import build_judge_from_args

    def body(*flags: str) -> dict:
        args = build_parser().parse_args(["m.jsonl", "--out", "o", "--judge", "openai", *flags])
        return build_judge_from_args(args).build_body(request())

    base = body("--model", "gpt-4o")
    assert body("--model", "gpt-4o", "--no-strict")["response_format"]["json_schema"]["strict"] is False
    assert base["response_format"]["json_schema"]["strict"] is True
    assert body("--model", "o3", "--reasoning-effort", "high")["reasoning_effort"] == "high"
    assert body("--model", "m", "--extra-body", '{"top_k": 2}')["top_k"] == 2
    order = body("--model", "gpt-4o", "--answer-order", "rationale-first")["response_format"]["json_schema"]
    assert next(iter(order["schema"]["properties"])) == "rationale"
    args = build_parser().parse_args(
        ["m.jsonl", "--out", "o", "--judge", "openai", "--model", "m", "--price", "1,2"]
    )
    assert build_judge_from_args(args).cost_usd(M, M) == pytest.approx(3.0)
    for bad in ('["x"]', "{nope", '{"model": "x"}'):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["m.jsonl", "--out", "o", "--model", "m", "--extra-body", bad])
