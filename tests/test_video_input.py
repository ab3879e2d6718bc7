"""``--input video`` and ``--show-reference`` for the openai judge: the request body, vLLM's own
protocol and video loader (skipped without vLLM), token counts, identity and the engine's checks."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import math

import numpy as np
import pytest

from labeler.cache import JudgmentCache
from labeler.engine import Engine, EngineConfig
from labeler.judges.openai_api import OpenAIJudge
from labeler.judges.video_parts import media_io_kwargs, timing_of
from labeler.judges.video_tokens import VIDEO_RULES, rule_for, smart_resize, video_tokens
from labeler.media.images import decode_image
from labeler.schemas import FatalJudgeError, InputError, ManifestEntry, SegmentRequest
from tests.conftest import textured_frames

VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not VLLM,
    reason="vLLM is not installed: pip install --no-deps vllm==0.34.0 plus pyzmq aiohttp pybase64 "
    "cachetools openai-harmony cbor2 msgspec uvloop py-cpuinfo (its protocol module's imports)",
)
QWEN = "Qwen/Qwen2.5-VL-7B-Instruct"
VLLM_URL = "http://gpu-box:8000/v1"
FPS = 24.0
INDICES = (27, 30, 33, 36)  # a segment's sampled frames in a 24 fps source


def segment(*, reference: bool = False, k: int = 4, h: int = 36, w: int = 64) -> SegmentRequest:
    first = textured_frames(k, h, w, seed=1)
    return SegmentRequest(
        prompt="a skier turns downhill",
        frames_first=first,
        frames_second=textured_frames(k, h, w, seed=2),
        start_s=1.0,
        end_s=1.5,
        index=1,
        num_segments=3,
        frame_times=tuple(round(i / FPS, 4) for i in INDICES[:k]),
        frame_indices=INDICES[:k],
        reference=textured_frames(k, h, w, seed=3) if reference else None,
        fps=FPS,
    )


def parts(body: dict, kind: str) -> list[dict]:
    return [
        p
        for m in body["messages"]
        if isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == kind
    ]


def near(got: np.ndarray, want: np.ndarray) -> bool:
    """JPEG at quality 90 of a busy texture: about 9 grey levels off on average; another video's
    frame is about 80 off."""
    return got.shape == want.shape and float(np.abs(got.astype(int) - want.astype(int)).mean()) < 15


def jpeg_frames(url: str) -> list[np.ndarray]:
    head, _, payload = url.partition(",")
    assert head == "data:video/jpeg;base64"
    return [decode_image(base64.b64decode(chunk)) for chunk in payload.split(",")]


# ---------------------------------------------------------------- the body, without vLLM


def test_frames_mode_is_unchanged_and_video_mode_sends_one_clip_per_video():
    req = segment()
    frames_body = OpenAIJudge(QWEN, base_url=VLLM_URL).build_body(req)
    assert len(parts(frames_body, "image_url")) == 8 and not parts(frames_body, "video_url")
    assert "media_io_kwargs" not in frames_body

    body = OpenAIJudge(QWEN, base_url=VLLM_URL, input_mode="video").build_body(req)
    videos = parts(body, "video_url")
    assert len(videos) == 2 and not parts(body, "image_url")
    for clip, frames in zip(videos, (req.frames_first, req.frames_second), strict=True):
        decoded = jpeg_frames(clip["video_url"]["url"])
        assert len(decoded) == 4
        assert all(near(got, want) for got, want in zip(decoded, frames, strict=True))
        assert not near(
            decoded[0], req.frames_second[0] if frames is req.frames_first else req.frames_first[0]
        )
    assert body["media_io_kwargs"] == {
        "video": {"fps": FPS, "frames_indices": list(INDICES), "total_num_frames": 37, "num_frames": 4}
    }


def test_timing_falls_back_to_frame_times_then_to_the_segment_span():
    req = segment()
    from_times = SegmentRequest(
        req.prompt, req.frames_first, req.frames_second, 1.0, 1.5, frame_times=req.frame_times, fps=FPS
    )
    assert timing_of(from_times).frames_indices == INDICES
    inline = SegmentRequest(req.prompt, req.frames_first, req.frames_second, 1.0, 1.5)
    timing = timing_of(inline)
    assert timing.fps == pytest.approx(8.0)  # 4 frames over half a second
    assert timing.frames_indices == (8, 9, 10, 11)
    assert media_io_kwargs(timing)["video"]["num_frames"] == 4


def test_video_input_is_refused_for_openai_and_for_composites():
    with pytest.raises(ValueError, match="OpenAI's Chat Completions API takes images, not video"):
        OpenAIJudge("gpt-4o-mini", input_mode="video")
    with pytest.raises(ValueError, match="drop --layout side-by-side"):
        OpenAIJudge(QWEN, base_url=VLLM_URL, input_mode="video", layout="side-by-side")
    with pytest.raises(ValueError, match="unknown input"):
        OpenAIJudge(QWEN, base_url=VLLM_URL, input_mode="audio")  # type: ignore[arg-type]


def test_input_mode_and_reference_enter_the_prompt_id_and_the_cache_key(tmp_path):
    judges = {
        (mode, ref): OpenAIJudge(QWEN, base_url=VLLM_URL, input_mode=mode, show_reference=ref)
        for mode in ("frames", "video")
        for ref in (False, True)
    }
    ids = {key: judge.prompt_id for key, judge in judges.items()}
    assert len(set(ids.values())) == 4
    assert ids["frames", False] == OpenAIJudge(QWEN, base_url=VLLM_URL).prompt_id
    assert ids["video", True].endswith("+video+reference")
    assert "input" not in judges["frames", False].fingerprint()  # default keys stay as they were
    keys = set()
    for judge in judges.values():
        engine = Engine(judge, EngineConfig())
        keys.add(engine._key({"a": "x", "b": "y"}, [0, 1], "ab", "p"))
    assert len(keys) == 4
    assert judges["video", True].uses_reference and not judges["video", False].uses_reference


def test_show_reference_puts_the_reference_first_with_a_note_in_both_modes():
    req = segment(reference=True)
    for mode, kind, count in (("frames", "image_url", 12), ("video", "video_url", 3)):
        body = OpenAIJudge(QWEN, base_url=VLLM_URL, input_mode=mode, show_reference=True).build_body(req)
        shown = parts(body, kind)
        assert len(shown) == count
        first = shown[0]["image_url"]["url"] if kind == "image_url" else shown[0]["video_url"]["url"]
        ref_frame = decode_image(base64.b64decode(first.split(",")[1]))
        assert near(ref_frame, req.reference[0])
        text = "\n".join(p["text"] for p in parts(body, "text"))
        assert "the real video both were generated from" in text
        assert "do not reward copying the reference's content" in text
    swapped = SegmentRequest(
        req.prompt, req.frames_second, req.frames_first, 1.0, 1.5, reference=req.reference, fps=FPS
    )
    body = OpenAIJudge(QWEN, base_url=VLLM_URL, input_mode="video", show_reference=True).build_body(swapped)
    clips = [jpeg_frames(p["video_url"]["url"])[0] for p in parts(body, "video_url")]
    # "ba": the reference stays first, then B (shown as Video A), then A.
    for got, want in zip(clips, (req.reference[0], req.frames_second[0], req.frames_first[0]), strict=True):
        assert near(got, want)


def test_show_reference_without_a_reference_fails_that_request():
    judge = OpenAIJudge(QWEN, base_url=VLLM_URL, show_reference=True)
    with pytest.raises(InputError, match="no reference video"):
        judge.build_body(segment())


def test_engine_fails_pairs_whose_reference_is_missing_or_mismatched(make_video, standin):
    standin.control(policy="first")
    a, b = make_video("a.mp4", 24, fps=24.0), make_video("b.mp4", 24, fps=24.0, seed=5)
    good_ref = make_video("ref.mp4", 24, fps=24.0, seed=7)
    short_ref = make_video("short.mp4", 12, fps=24.0, seed=7)
    judge = OpenAIJudge(QWEN, base_url=standin.base_url, show_reference=True, logprobs=False)
    engine = Engine(judge, EngineConfig(frames_per_segment=2, segment_seconds=0.5))

    async def label(reference):
        entry = ManifestEntry(pair_id="p", prompt="x", video_a=str(a), video_b=str(b), reference=reference)
        try:
            return await engine.label_pair(entry)
        finally:
            await judge.aclose()

    record = asyncio.run(label(str(good_ref)))
    assert record.labels == ["tie", "tie"]  # "first" in both orders: position bias, a tie
    with pytest.raises(Exception, match="reference"):
        asyncio.run(label(str(short_ref)))
    with pytest.raises(InputError, match="no reference video"):
        asyncio.run(label(None))


# ---------------------------------------------------------------- token counts


def test_video_tokens_follow_the_qwen_rules():
    # The example: 8 frames at 448x252 are 4 temporal patches of 16x9 merged tokens.
    assert video_tokens(QWEN, 8, 252, 448) == 4 * 16 * 9 + 2
    assert video_tokens(QWEN, 7, 252, 448) == video_tokens(QWEN, 8, 252, 448)  # padded to 8
    assert rule_for("Qwen/Qwen3-VL-8B-Instruct")[0].patch == 16
    assert rule_for("some-local-model") == (VIDEO_RULES["qwen2.5-vl"], False)
    # A frame over max_pixels is shrunk to fit it.
    h, w = smart_resize(1080, 1920, 28, 128 * 28 * 28, 768 * 28 * 28)
    assert h * w <= 768 * 28 * 28 and h % 28 == 0 and w % 28 == 0
    # Qwen3-VL bounds the whole clip: 32 frames get smaller frames than 8.
    small = video_tokens("Qwen3-VL-8B", 32, 720, 1280) / 16
    large = video_tokens("Qwen3-VL-8B", 8, 720, 1280) / 4
    assert small < large


@pytest.mark.parametrize(("k", "h", "w"), [(8, 252, 448), (8, 480, 854), (16, 720, 1280), (4, 100, 60)])
def test_video_tokens_match_the_transformers_qwen2_vl_processor_grid(k, h, w):
    """The per-frame grid is the one transformers' own Qwen2-VL processor (the PIL backend: no
    torchvision here) computes at the video processor's default size."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 128 * 28 * 28, "longest_edge": 768 * 28 * 28})
    frame = np.zeros((h, w, 3), np.uint8)
    grid = processor(images=[frame], return_tensors="np")["image_grid_thw"][0]
    per_step = int(grid[1] * grid[2]) // 4
    assert video_tokens(QWEN, k, h, w) == math.ceil(k / 2) * per_step + 2


def test_estimate_counts_video_tokens_not_image_tokens():
    req = segment(k=8, h=252, w=448)
    frames = OpenAIJudge(QWEN, base_url=VLLM_URL).estimate(req)
    video = OpenAIJudge(QWEN, base_url=VLLM_URL, input_mode="video").estimate(req)
    with_ref = OpenAIJudge(QWEN, base_url=VLLM_URL, input_mode="video", show_reference=True).estimate(
        segment(k=8, h=252, w=448, reference=True)
    )
    assert video.images == 0 and frames.images == 16
    text_only = video.input_tokens - 2 * (4 * 16 * 9 + 2)
    assert 0 < text_only < 1000
    assert with_ref.input_tokens - video.input_tokens >= 4 * 16 * 9 + 2
    assert "2 videos a request" in video.extra["frames"] and "qwen2.5-vl" in video.extra["frames"]


# ---------------------------------------------------------------- against vLLM's own code


@needs_vllm
@pytest.mark.parametrize("show_reference", [False, True])
def test_the_body_is_a_valid_vllm_request_whose_videos_decode_to_the_segment(show_reference):
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.multimodal.media.connector import MediaConnector, merge_media_io_kwargs

    req = segment(reference=show_reference)
    judge = OpenAIJudge(QWEN, base_url=VLLM_URL, input_mode="video", show_reference=show_reference)
    body = judge.build_body(req)
    parsed = ChatCompletionRequest.model_validate(body)
    assert parsed.media_io_kwargs == body["media_io_kwargs"]
    connector = MediaConnector(merge_media_io_kwargs(None, parsed.media_io_kwargs))
    clips = parts(body, "video_url")
    expected = ([req.reference] if show_reference else []) + [req.frames_first, req.frames_second]
    assert len(clips) == len(expected)
    for clip, want in zip(clips, expected, strict=True):
        frames, metadata = connector.fetch_video(clip["video_url"]["url"]).media
        assert all(near(got, w) for got, w in zip(frames, want, strict=True))
        assert metadata["fps"] == FPS and metadata["frames_indices"] == list(INDICES)
        assert metadata["total_num_frames"] == 37


@needs_vllm
def test_more_frames_than_vllms_default_32_all_arrive():
    from vllm.multimodal.media.connector import MediaConnector, merge_media_io_kwargs

    first = textured_frames(40, 16, 16)
    req = SegmentRequest("p", first, first, 0.0, 2.0, frame_indices=tuple(range(0, 80, 2)), fps=20.0)
    body = OpenAIJudge(QWEN, base_url=VLLM_URL, input_mode="video").build_body(req)
    connector = MediaConnector(merge_media_io_kwargs(None, body["media_io_kwargs"]))
    frames, metadata = connector.fetch_video(parts(body, "video_url")[0]["video_url"]["url"]).media
    assert frames.shape[0] == 40 and len(metadata["frames_indices"]) == 40


@needs_vllm
@pytest.mark.parametrize(("show_reference", "videos"), [(False, 2), (True, 3)])
def test_judge_against_a_vllm_front_end(show_reference, videos):
    from tests.vllm_frontend import VllmFrontend

    req = segment(reference=show_reference)
    with VllmFrontend() as server:
        judge = OpenAIJudge(
            QWEN, base_url=server.base_url, input_mode="video", show_reference=show_reference, logprobs=False
        )

        async def go():
            try:
                return await judge.judge(req)
            finally:
                await judge.aclose()

        judgment = asyncio.run(go())
    assert judgment.label == "A" and judgment.prob_source == "vote"
    (seen,) = server.state.requests
    assert len(seen) == videos
    for video in seen:
        assert video.frames.shape == req.frames_first.shape
        assert video.metadata["fps"] == FPS and video.metadata["frames_indices"] == list(INDICES)


@needs_vllm
def test_a_server_that_does_not_trust_request_media_kwargs_is_a_clear_fatal_error():
    from tests.vllm_frontend import VllmFrontend

    with VllmFrontend(trust_mm_kwargs=False) as server:
        judge = OpenAIJudge(QWEN, base_url=server.base_url, input_mode="video", logprobs=False)

        async def go():
            try:
                return await judge.judge(segment())
            finally:
                await judge.aclose()

        with pytest.raises(FatalJudgeError, match="--trust-request-mm-kwargs"):
            asyncio.run(go())


def test_dry_run_counts_video_tokens_and_names_a_pair_without_reference(make_video, tmp_path):
    from labeler.dryrun import dry_run

    a, b = make_video("a.mp4", 48, fps=24.0, h=252, w=448), make_video("b.mp4", 48, fps=24.0, h=252, w=448)
    ref = make_video("r.mp4", 48, fps=24.0, h=252, w=448, seed=3)
    manifest = tmp_path / "m.jsonl"
    lines = [
        {"pair_id": "with-ref", "prompt": "x", "video_a": str(a), "video_b": str(b), "reference": str(ref)},
        {"pair_id": "no-ref", "prompt": "x", "video_a": str(a), "video_b": str(b)},
    ]
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    config = EngineConfig(frames_per_segment=8, segment_seconds=1.0, max_side=448)

    def totals(**options) -> dict[str, str]:
        judge = OpenAIJudge(QWEN, base_url=VLLM_URL, **options)
        report = dry_run(manifest, Engine(judge, config, JudgmentCache(None)))
        return dict(line.split(None, 1) for line in report.splitlines()[1:] if line.startswith("  "))

    frames, video = totals(), totals(input_mode="video")
    assert video["images"] == "0" and frames["images"] == str(2 * 2 * 2 * 16)  # pairs x segments x orders
    per_request = int(video["input_tokens"]) / int(video["requests"])
    assert 2 * (4 * 16 * 9 + 2) < per_request < 2 * (4 * 16 * 9 + 2) + 1000
    assert int(video["input_tokens"]) < int(frames["input_tokens"])
    shown = totals(input_mode="video", show_reference=True)
    assert shown["pairs"] == "1" and shown["bad_pairs"] == "1"
    assert "no-ref: --show-reference: this pair has no reference video" in shown["problem:"]


@needs_vllm
def test_engine_with_video_and_reference_against_the_vllm_front_end(make_video):
    """A whole pair through the engine: every request of both orders holds the reference, A and B
    as three clips of the segment's frames, timed at the source's frame numbers."""
    from tests.vllm_frontend import VllmFrontend

    a, b = make_video("a.mp4", 24, fps=24.0), make_video("b.mp4", 24, fps=24.0, seed=5)
    ref = make_video("ref.mp4", 24, fps=24.0, seed=7)
    entry = ManifestEntry(pair_id="p", prompt="x", video_a=str(a), video_b=str(b), reference=str(ref))
    config = EngineConfig(frames_per_segment=3, segment_seconds=0.5)
    with VllmFrontend() as server:
        judge = OpenAIJudge(
            QWEN, base_url=server.base_url, input_mode="video", show_reference=True, logprobs=False
        )

        async def label():
            try:
                return await Engine(judge, config, JudgmentCache(None)).label_pair(entry)
            finally:
                await judge.aclose()

        record = asyncio.run(label())
    assert record.labeler.prompt_id.endswith("+video+reference")
    assert record.labels == ["tie", "tie"]  # the front end always prefers the first shown
    assert len(server.state.requests) == 4  # 2 segments x 2 orders
    plans = Engine(judge, config, JudgmentCache(None)).plan_pair(entry)
    indices = {tuple(seg.frame_indices) for seg in plans.segments}
    for seen in server.state.requests:
        assert len(seen) == 3
        assert {tuple(v.metadata["frames_indices"]) for v in seen} <= indices
        assert all(v.frames.shape[0] == 3 and v.metadata["fps"] == 24.0 for v in seen)


@pytest.mark.parametrize(("h", "w"), [(252, 448), (720, 1280), (40, 30)])
def test_frames_mode_counts_qwen_images_by_the_processor_grid(h, w):
    """Still images of a Qwen VL model are counted with the image processor's grid at the released
    checkpoint's size (transformers' own Qwen2-VL image processor), not OpenAI's tiles."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from labeler.judges.video_tokens import image_tokens

    processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 3136, "longest_edge": 12845056})
    grid = processor(images=[np.zeros((h, w, 3), np.uint8)], return_tensors="np")["image_grid_thw"][0]
    assert image_tokens(QWEN, h, w) == int(grid[1] * grid[2]) // 4 + 2
    req = segment(k=8, h=252, w=448)
    frames = OpenAIJudge(QWEN, base_url=VLLM_URL).estimate(req)
    video = OpenAIJudge(QWEN, base_url=VLLM_URL, input_mode="video").estimate(req)
    # The figures: 16 images of 144 (+2 markers) against 2 videos of 576 (+2); frames mode
    # also writes a caption per image (about 120 tokens of text for 16).
    saved = frames.input_tokens - video.input_tokens
    assert 16 * 146 - 2 * 578 < saved < 16 * 146 - 2 * 578 + 200
    gpt = OpenAIJudge("gpt-4o-mini").estimate(req)
    assert gpt.images == 16 and gpt.input_tokens != frames.input_tokens  # OpenAI keeps its own rule
