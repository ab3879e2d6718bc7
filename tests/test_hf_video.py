"""The hf judge's ``--input video`` on a tiny random Qwen2-VL built in code (tests/hf_tiny_qwen.py),
and the torchvision-free Qwen2-VL inputs it rests on (labeler.judges.hf_qwen)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from labeler.errors import UsageError
from labeler.judge_config import JudgeConfig
from labeler.judges.hf_local import HFJudge
from labeler.judges.hf_qwen import video_patches
from labeler.judges.prompts import load_prompt
from labeler.schemas import FatalJudgeError, InputError, SegmentRequest
from tests.conftest import textured_frames
from tests.hf_tiny import build_tiny_vlm
from tests.hf_tiny_qwen import MAX_PIXELS, MIN_PIXELS, VIDEO, build_tiny_qwen2_vl

K = 4  # frames per segment: 2 temporal patches per video


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny") / "qwen2vl")


@pytest.fixture(scope="module")
def video_judge(qwen_dir: Path) -> HFJudge:
    judge = HFJudge(str(qwen_dir), input_mode="video")
    judge.load()
    return judge


@pytest.fixture(scope="module")
def image_processor() -> Any:
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)


def make_request(seed_first: int = 1, seed_second: int = 2, *, reference: bool = False) -> SegmentRequest:
    return SegmentRequest(
        prompt="a dog runs",
        frames_first=textured_frames(K, seed=seed_first),
        frames_second=textured_frames(K, seed=seed_second),
        start_s=0.0,
        end_s=1.0,
        frame_times=tuple(0.125 + 0.25 * i for i in range(K)),
        reference=textured_frames(K, seed=9) if reference else None,
    )


def spy_inputs(judge: HFJudge, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record the model inputs of every forward the judge prepares."""
    seen: list[dict[str, Any]] = []
    original = judge._inputs

    def spy(text: str, images: list[Any], videos: list[list[Any]]) -> Any:
        inputs = original(text, images, videos)
        seen.append(inputs)
        return inputs

    monkeypatch.setattr(judge, "_inputs", spy)
    return seen


# --------------------------------------------------------------------------- the adapter


def _video_processor_patchify(frames: np.ndarray, patch: int, merge: int, tps: int) -> np.ndarray:
    """transformers' ``Qwen2VLVideoProcessor.patchify`` (video_processing_qwen2_vl.py, 5.x), the same
    view/permute in numpy for one video [T, C, H, W] (that module itself needs torchvision)."""
    if pad := -frames.shape[0] % tps:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    t, c, h, w = frames.shape
    gt, gh, gw = t // tps, h // patch, w // patch
    patches = frames.reshape(1, gt, tps, c, gh // merge, merge, patch, gw // merge, merge, patch)
    patches = patches.transpose(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return patches.reshape(gt * gh * gw, c * tps * patch * patch)


@pytest.mark.parametrize("k", [4, 3])  # 3: an odd count, the last frame repeated as the video processor pads
def test_video_patches_match_the_video_processors_layout(image_processor: Any, k: int) -> None:
    frames = list(textured_frames(k, h=60, w=100, seed=3))
    rows, grid = video_patches(image_processor, frames)
    # The frames as the image processor resizes and normalizes them, before it patchifies them.
    size = image_processor.size
    prepared = []
    for frame in frames:
        chw = np.asarray(frame).transpose(2, 0, 1)
        chw = image_processor.resize(chw, size=size, resample=image_processor.resample, factor=28)
        chw = image_processor.rescale(chw, image_processor.rescale_factor)
        prepared.append(image_processor.normalize(chw, image_processor.image_mean, image_processor.image_std))
    expected = _video_processor_patchify(np.stack(prepared).astype(np.float32), 14, 2, 2)
    assert grid == ((k + 1) // 2, prepared[0].shape[1] // 14, prepared[0].shape[2] // 14)
    assert rows.shape == expected.shape
    np.testing.assert_allclose(rows, expected, atol=1e-6)


def test_a_still_clip_is_the_image_and_its_grid(image_processor: Any) -> None:
    """Two copies of one frame make one temporal patch equal to the processor's own image patches."""
    frame = textured_frames(1, h=60, w=100, seed=4)[0]
    rows, grid = video_patches(image_processor, [frame, frame])
    own = image_processor(images=[frame], return_tensors="np")
    assert grid == tuple(int(x) for x in own["image_grid_thw"][0])
    np.testing.assert_array_equal(rows, own["pixel_values"])


def test_frames_of_different_sizes_are_refused(image_processor: Any) -> None:
    small, big = textured_frames(1, h=60, w=100)[0], textured_frames(1, h=120, w=100)[0]
    with pytest.raises(ValueError, match="same size"):
        video_patches(image_processor, [small, big])


# --------------------------------------------------------------------------- the judge


def test_video_mode_sends_each_segment_as_a_video(
    video_judge: HFJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy_inputs(video_judge, monkeypatch)
    result = asyncio.run(video_judge.judge(make_request()))
    (inputs,) = seen
    assert "pixel_values" not in inputs and "image_grid_thw" not in inputs
    grids = inputs["video_grid_thw"].tolist()
    assert len(grids) == 2 and all(g[0] == K // 2 for g in grids)  # A and B, 2 frames per temporal patch
    video_id = video_judge._processor.tokenizer.convert_tokens_to_ids(VIDEO)
    ids = inputs["input_ids"][0]
    assert int((ids == video_id).sum()) == sum(int(np.prod(g)) // 4 for g in grids)
    assert int((inputs["mm_token_type_ids"][0] == 2).sum()) == int((ids == video_id).sum())
    assert inputs["pixel_values_videos"].shape[0] == sum(int(np.prod(g)) for g in grids)
    assert result.prob_source == "logits" and result.p_a + result.p_b + result.p_tie == pytest.approx(1.0)
    assert result.input_tokens == ids.shape[0]
    assert video_judge.prompt_id == load_prompt("conservative").prompt_id + "+video"


def test_video_mode_reads_the_frames_order(video_judge: HFJudge) -> None:
    """Frames 0/1 share a temporal patch: reversing A's frames changes what the model sees."""
    request = make_request(5, 6)
    reversed_a = dataclasses.replace(request, frames_first=request.frames_first[::-1].copy())
    forward = asyncio.run(video_judge.judge(request))
    backward = asyncio.run(video_judge.judge(reversed_a))
    assert (forward.p_a, forward.p_b) != pytest.approx((backward.p_a, backward.p_b), abs=1e-6)


def test_frames_mode_on_qwen_sends_images(qwen_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    judge = HFJudge(str(qwen_dir))
    seen = spy_inputs(judge, monkeypatch)
    frames = asyncio.run(judge.judge(make_request()))
    (inputs,) = seen
    assert "pixel_values_videos" not in inputs and "video_grid_thw" not in inputs
    assert inputs["image_grid_thw"].shape[0] == 2 * K
    assert all(row[0] == 1 for row in inputs["image_grid_thw"].tolist())
    video = asyncio.run(HFJudge(str(qwen_dir), input_mode="video").judge(make_request()))
    assert frames.input_tokens > video.input_tokens  # two frames per temporal patch: fewer tokens
    assert judge.fingerprint() != HFJudge(str(qwen_dir), input_mode="video").fingerprint()


def test_show_reference_sends_three_videos(qwen_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    judge = HFJudge(str(qwen_dir), input_mode="video", show_reference=True)
    assert judge.uses_reference and judge.prompt_id.endswith("+video+reference")
    seen = spy_inputs(judge, monkeypatch)
    asyncio.run(judge.judge(make_request(reference=True)))
    assert seen[0]["video_grid_thw"].shape[0] == 3
    with pytest.raises(InputError, match="no reference"):
        asyncio.run(judge.judge(make_request()))


def test_video_mode_is_refused_for_other_models(tmp_path: Path) -> None:
    llava = build_tiny_vlm(tmp_path / "llava")
    judge = HFJudge(str(llava), input_mode="video")
    with pytest.raises(FatalJudgeError, match=r"Qwen2-VL.*'llava'.*--input frames"):
        judge.load()
    assert not asyncio.run(judge.ready())


def test_video_mode_options_are_checked() -> None:
    with pytest.raises(ValueError, match="separate"):
        HFJudge("some/model", input_mode="video", layout="side-by-side")
    with pytest.raises(ValueError, match="unknown input"):
        HFJudge("some/model", input_mode="clip")  # type: ignore[arg-type]


def test_judge_config_passes_input_and_reference_to_hf(qwen_dir: Path) -> None:
    judge = JudgeConfig(judge="hf", model=str(qwen_dir), input="video", show_reference=True).build()
    assert isinstance(judge, HFJudge)
    assert judge.input_mode == "video" and judge.show_reference
    with pytest.raises(UsageError, match="--input"):
        JudgeConfig(judge="metrics", input="video")


def test_engine_labels_a_pair_in_video_mode(qwen_dir: Path, make_video, tmp_path: Path) -> None:
    """Videos -> engine (both orders) -> hf judge in video mode -> dense record."""
    from labeler.cache import JudgmentCache
    from labeler.engine import Engine, EngineConfig
    from labeler.schemas import ManifestEntry

    entry = ManifestEntry(
        pair_id="p1",
        prompt="a textured wall",
        video_a=str(make_video("a.mp4", n_frames=16, fps=8.0, seed=1)),
        video_b=str(make_video("b.mp4", n_frames=16, fps=8.0, seed=2)),
    )
    config = EngineConfig(frames_per_segment=2, max_side=64)
    judge = HFJudge(str(qwen_dir), input_mode="video")
    record = asyncio.run(Engine(judge, config, JudgmentCache(tmp_path / "cache")).label_pair(entry))
    assert len(record.segments) == 2 and record.labeler.prompt_id.endswith("+video")
    for seg in record.segments:
        assert [v.order for v in seg.votes] == ["ab", "ba"]
        assert seg.p_a + seg.p_b + seg.p_tie == pytest.approx(1.0, abs=1e-6)


def test_qwen2_5_vl_gets_the_frames_real_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Qwen2.5-VL spaces temporal positions by seconds per temporal patch: 2 frames / sampled fps.
    The same frames sampled over twice the time are another video to it (not to Qwen2-VL)."""
    judge = HFJudge(str(build_tiny_qwen2_vl(tmp_path / "qwen25", family="qwen2_5_vl")), input_mode="video")
    seen = spy_inputs(judge, monkeypatch)
    fast = asyncio.run(judge.judge(make_request()))  # 4 frames over 1 s: 4 fps
    slow_request = dataclasses.replace(
        make_request(), end_s=2.0, frame_times=tuple(0.25 + 0.5 * i for i in range(K))
    )
    slow = asyncio.run(judge.judge(slow_request))  # 4 frames over 2 s: 2 fps
    assert seen[0]["second_per_grid_ts"].tolist() == pytest.approx([0.5, 0.5])
    assert seen[1]["second_per_grid_ts"].tolist() == pytest.approx([1.0, 1.0])
    assert "pixel_values" not in seen[0] and seen[0]["video_grid_thw"].shape[0] == 2
    assert (fast.p_a, fast.p_b) != pytest.approx((slow.p_a, slow.p_b), abs=1e-6)


def test_qwen2_vl_takes_no_time_input(video_judge: HFJudge, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy_inputs(video_judge, monkeypatch)
    asyncio.run(video_judge.judge(make_request()))
    assert "second_per_grid_ts" not in seen[0]


def test_sampled_fps_is_the_sources_rate_over_the_sampling_step() -> None:
    from labeler.judges.hf_qwen import sampled_fps
    from labeler.judges.video_parts import VideoTiming

    assert sampled_fps(VideoTiming(fps=24.0, frames_indices=(0, 4, 8, 12), total_num_frames=13)) == 6.0
    assert sampled_fps(VideoTiming(fps=24.0, frames_indices=(5,), total_num_frames=6)) == 24.0
