"""The ``gemini`` judge against a fake Gemini API built from google-genai's own types (tests/gemini_fake.py)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip(
    "google.genai", reason="the gemini judge needs google-genai (pip install 'densepref[gemini]')"
)

from google.genai import types

from labeler.engine import Engine, EngineConfig
from labeler.judges import build_judge
from labeler.judges.gemini import GeminiJudge
from labeler.schemas import (
    FatalJudgeError,
    InputError,
    JudgeParseError,
    ManifestEntry,
    SegmentRequest,
    TransientJudgeError,
)
from tests.conftest import textured_frames
from tests.gemini_fake import FakeGemini


def segment(reference: bool = False) -> SegmentRequest:
    return SegmentRequest(
        prompt="a skier turns downhill",
        frames_first=textured_frames(4, 32, 48, seed=1),
        frames_second=textured_frames(4, 32, 48, seed=2),
        start_s=1.0,
        end_s=1.5,
        reference=textured_frames(4, 32, 48, seed=3) if reference else None,
        fps=24.0,
    )


def judge_for(fake: FakeGemini, **options) -> GeminiJudge:
    options.setdefault("api_key", "test-key")
    return GeminiJudge(
        "gemini-2.5-flash", http_options=types.HttpOptions(httpx_async_client=fake.client()), **options
    )


def run(judge: GeminiJudge, request: SegmentRequest):
    async def go():
        try:
            return await judge.judge(request)
        finally:
            await judge.aclose()

    return asyncio.run(go())


def test_each_video_goes_as_inline_mp4_with_its_sampling_fps_and_logprobs_give_probabilities():
    fake = FakeGemini(script=["A"])
    judgment = run(judge_for(fake), segment())
    (seen,) = fake.seen
    assert seen.videos == [(4, 8.0), (4, 8.0)]  # 4 frames over half a second: every frame sampled
    assert seen.config.response_mime_type == "application/json"
    assert seen.config.response_json_schema["required"] == ["label", "rationale"]
    assert seen.config.response_logprobs is True and seen.config.logprobs == 5
    assert "meticulous video quality rater" in seen.system.parts[0].text
    assert (judgment.label, judgment.prob_source) == ("A", "logprobs")
    assert (judgment.p_a, judgment.p_b, judgment.p_tie) == pytest.approx((0.7, 0.2, 0.1))
    assert judgment.input_tokens == 1000 + 258 * 8 and judgment.output_tokens == 15
    assert judgment.model == "gemini-fake-001"


def test_show_reference_sends_three_videos_and_a_missing_reference_fails():
    fake = FakeGemini(script=["B"])
    run(judge_for(fake, show_reference=True), segment(reference=True))
    assert len(fake.seen[0].videos) == 3
    text = " ".join(p.text for p in fake.seen[0].contents[0].parts if p.text)
    assert "do not reward copying the reference's content" in text
    with pytest.raises(InputError, match="no reference video"):
        run(judge_for(FakeGemini(), show_reference=True), segment())


def test_a_model_without_logprobs_falls_back_to_votes_once():
    fake = FakeGemini(script=["no-logprobs"])
    judge = judge_for(fake)
    judgment = run(judge, segment())
    assert judgment.prob_source == "vote" and (judgment.p_a, judgment.p_b) == (1.0, 0.0)
    assert "response_logprobs" in judge.fallbacks
    assert [s.config.response_logprobs for s in fake.seen] == [True, None]
    assert judge.fingerprint()["logprobs"] is True  # the requested settings, as the openai judge


def test_garbage_is_reasked_then_fails_with_the_parse_error():
    fake = FakeGemini(script=["garbage", "tie"])
    judgment = run(judge_for(fake), segment())
    assert judgment.label == "tie" and len(fake.seen) == 2
    assert "could not be used" in fake.seen[1].contents[-1].parts[0].text
    with pytest.raises(JudgeParseError, match="no usable answer after 2 attempts"):
        run(judge_for(FakeGemini(script=["garbage"]), max_parse_retries=1), segment())


@pytest.mark.parametrize(
    ("status", "kind"), [(429, TransientJudgeError), (503, TransientJudgeError), (403, FatalJudgeError)]
)
def test_status_errors_map_to_transient_or_fatal(status, kind):
    fake = FakeGemini(script=[status])
    with pytest.raises(kind, match=f"HTTP {status}"):
        run(judge_for(fake), segment())
    assert len(fake.seen) == 1  # the SDK's own retries are off: the engine retries


def test_no_key_is_fatal_and_prices_follow_the_table(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(FatalJudgeError, match="GEMINI_API_KEY"):
        run(GeminiJudge("gemini-2.5-flash"), segment())
    judge = GeminiJudge("gemini-2.5-flash-preview-09-2025")
    assert judge.cost_usd(1_000_000, 1_000_000) == pytest.approx(0.30 + 2.50)
    assert judge.cost_usd(1_000_000, 0, batch=True) == pytest.approx(0.15)
    assert GeminiJudge("gemini-9-ultra").cost_usd(1, 1) is None
    assert GeminiJudge("gemini-9-ultra", price=(1.0, 2.0)).cost_usd(1_000_000, 0) == 1.0


def test_estimate_counts_frames_as_video_tokens():
    est = GeminiJudge("gemini-2.5-flash", show_reference=True).estimate(segment(reference=True))
    assert est.images == 0 and est.input_tokens > 3 * 4 * 258
    assert "3 inline video/mp4 parts" in est.extra["frames"]


def test_the_engine_swaps_caches_and_records_the_prompt_id(make_video, tmp_path):
    from labeler.cache import JudgmentCache

    a, b = make_video("a.mp4", 24, fps=24.0), make_video("b.mp4", 24, fps=24.0, seed=5)
    entry = ManifestEntry(pair_id="p", prompt="x", video_a=str(a), video_b=str(b))
    fake = FakeGemini(script=["A"])  # always the first shown: a tie once both orders are folded
    cache = JudgmentCache(tmp_path / "cache")

    async def label():
        judge = judge_for(fake)
        try:
            return await Engine(
                judge, EngineConfig(frames_per_segment=2, segment_seconds=1.0), cache
            ).label_pair(entry)
        finally:
            await judge.aclose()

    record = asyncio.run(label())
    assert record.labels == ["tie"] and len(fake.seen) == 2
    assert record.labeler.prompt_id.endswith("+video")
    asyncio.run(label())
    assert len(fake.seen) == 2  # the second run is all cache hits
    assert build_judge("gemini", model="gemini-2.5-flash").name == "gemini"


def test_the_command_line_builds_the_gemini_judge():
    import labeler.batch
    from labeler.cli_options import build_judge_from_args

    args = labeler.batch.build_parser().parse_args(
        [
            "m.jsonl",
            "--out",
            "o",
            "--judge",
            "gemini",
            "--model",
            "gemini-2.5-flash",
            "--show-reference",
            "--no-logprobs",
        ]
    )
    judge = build_judge_from_args(args)
    assert isinstance(judge, GeminiJudge) and judge.show_reference and not judge.logprobs
    assert judge.uses_reference and judge.prompt_id.endswith("+video+reference")


def test_a_segment_over_the_inline_limit_fails_alone(monkeypatch):
    import labeler.judges.gemini as gemini

    monkeypatch.setattr(gemini, "MAX_INLINE_BYTES", 1000)  # the real 20 MiB needs huge frames
    fake = FakeGemini()
    with pytest.raises(InputError, match="over Gemini's 20 MiB of inline data"):
        run(judge_for(fake), segment())
    assert fake.seen == []  # nothing was sent
