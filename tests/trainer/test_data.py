"""Preference data for training: pair selection, latent/text caching, batching, media helpers."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tests.conftest import textured_frames
from tests.trainer.conftest import make_record, write_records
from trainer.data import DataError, Geometry, PreferenceDataset, build_dataset, collate, select_pairs
from trainer.latents import latent_frame_labels
from trainer.media import MediaError, fit_frames, read_video, resample_fps, write_video

TINY = Geometry(33, 64, 64)


def test_select_pairs_keeps_clips_with_more_than_20_percent_nontie(tmp_path):
    records = [
        make_record("quarter", ["A", "tie", "tie", "tie"]),  # 25 % > 20 %: kept
        make_record("fifth", ["A", "tie", "tie", "tie", "tie"], num_frames=40),  # 20 %: not above, dropped
        make_record("none", ["tie", "tie", "tie", "tie"]),
        make_record("even", ["A", "B", "tie", "tie"]),  # video label tie: dense keeps it, vanilla drops it
    ]
    path = write_records(tmp_path / "labels.jsonl", records)
    kept, skipped = select_pairs(path)
    assert [r.pair_id for r in kept] == ["quarter", "even"]
    assert skipped == {"few_nontie": 2}
    kept, skipped = select_pairs(path, mode="vanilla")
    assert [r.pair_id for r in kept] == ["quarter"]
    assert skipped == {"few_nontie": 2, "tie_video": 1}
    kept, _ = select_pairs(path, min_nontie_fraction=0.0)
    assert [r.pair_id for r in kept] == ["quarter", "fifth", "even"]
    kept, _ = select_pairs(path, min_nontie_fraction=0.3)
    assert [r.pair_id for r in kept] == ["even"]


def test_select_pairs_on_an_empty_file_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no preference records"):
        select_pairs(tmp_path / "empty.jsonl")


@pytest.fixture
def pair_files(tmp_path, source_videos):
    """Two pairs over the session's source clips (10 fps, 50 frames), with relative paths."""
    for v in source_videos:
        shutil.copy(v, tmp_path / v.name)
    records = [
        make_record("p0", ["A", "B", "tie", "A", "A"], video_a="clip0.mp4", video_b="clip1.mp4", num_frames=50, fps=10.0),
        make_record("p1", ["B", "B", "A", "tie", "tie"], video_a="clip1.mp4", video_b="clip0.mp4", num_frames=50,
                    fps=10.0, prompt="another prompt"),
    ]  # fmt: skip
    return tmp_path, records


def test_build_dataset_encodes_maps_labels_and_batches(pair_files, tiny_adapter):
    root, records = pair_files
    dataset = build_dataset(records, tiny_adapter, TINY, root / "cache", root)
    assert len(dataset) == 2
    item = dataset[0]
    assert item["latents_a"].shape == (16, 9, 8, 8)
    assert item["text"].shape == (32, 32)
    segments = [
        (s.start_frame, s.end_frame, {"A": 1, "B": -1, "tie": 0}[s.label]) for s in records[0].segments
    ]
    expected = latent_frame_labels(segments, 9, 4, 33)
    assert item["labels"].tolist() == expected.labels
    assert item["segment_ids"].tolist() == expected.segment_ids
    assert item["video_label"].item() == 1
    # p1 uses the same two clips the other way round: the same cached latents, swapped
    assert torch.equal(dataset[1]["latents_a"], item["latents_b"])
    assert not torch.equal(dataset[1]["text"], item["text"])
    batch = collate([dataset[0], dataset[1]])
    assert batch["latents_a"].shape == (2, 16, 9, 8, 8)
    assert batch["labels"].shape == (2, 9)
    assert batch["pair_id"] == ["p0", "p1"]


def test_latents_are_cached_on_disk_and_keyed_by_content(pair_files, tiny_adapter, monkeypatch):
    root, records = pair_files
    first = build_dataset(records, tiny_adapter, TINY, root / "cache", root)
    calls = []
    real_encode = tiny_adapter.encode_video
    monkeypatch.setattr(tiny_adapter, "encode_video", lambda frames: calls.append(1) or real_encode(frames))
    monkeypatch.setattr(
        tiny_adapter, "encode_prompts", lambda p: pytest.fail("text encoder ran on a cached prompt")
    )
    again = build_dataset(records, tiny_adapter, TINY, root / "cache", root)
    assert calls == []
    assert torch.equal(again[0]["latents_a"], first[0]["latents_a"])
    write_video(root / "clip0.mp4", textured_frames(50, h=72, w=96, seed=9), 10.0)  # new content, same name
    changed = build_dataset(records, tiny_adapter, TINY, root / "cache", root)
    assert len(calls) == 1
    assert not torch.equal(changed[0]["latents_a"], first[0]["latents_a"])
    other_geometry = build_dataset(records, tiny_adapter, Geometry(33, 32, 32), root / "cache", root)
    assert other_geometry[0]["latents_a"].shape == (16, 9, 4, 4)


def test_missing_video_and_short_labels_name_the_pair(pair_files, tiny_adapter):
    root, records = pair_files
    missing = records[0].model_copy(update={"video_b": "nope.mp4"})
    with pytest.raises(DataError, match=r"pair p0: video .*nope\.mp4 not found"):
        build_dataset([missing], tiny_adapter, TINY, root / "cache", root)
    short = make_record("short", ["A", "B"], video_a="clip0.mp4", video_b="clip1.mp4", num_frames=16)
    with pytest.raises(DataError, match="pair short: labels cover 16 frames, training needs 33"):
        build_dataset([short], tiny_adapter, TINY, root / "cache", root)
    with pytest.raises(ValueError, match="num_frames must be 1 \\+ k\\*4"):
        build_dataset(records, tiny_adapter, Geometry(32, 64, 64), root / "cache", root)
    too_long = Geometry(61, 64, 64)
    long_labels = [
        make_record("p0", ["A"] * 7, video_a="clip0.mp4", video_b="clip1.mp4", num_frames=70, fps=10.0)
    ]
    with pytest.raises(DataError, match=r"pair p0: .* has 50 frames, training needs 61"):
        build_dataset(long_labels, tiny_adapter, too_long, root / "cache", root)


def test_collate_rejects_mismatched_shapes():
    a = {
        "pair_id": "a",
        **{k: torch.zeros(2) for k in ("latents_a", "latents_b", "text", "labels", "segment_ids")},
    }
    b = dict(a, pair_id="b", labels=torch.zeros(3))
    a["video_label"] = b["video_label"] = torch.tensor(1)
    with pytest.raises(DataError, match="different labels shapes"):
        collate([a, b])
    with pytest.raises(DataError, match="no pairs"):
        PreferenceDataset([])


def test_media_roundtrip_resample_and_fit(tmp_path):
    frames = textured_frames(20, h=48, w=64, seed=3)
    path = write_video(tmp_path / "v.mp4", frames, 20.0, crf=0)
    video = read_video(path)
    assert video.frames.shape == (20, 48, 64, 3) and video.fps == pytest.approx(20.0)
    assert np.abs(video.frames.astype(int) - frames).mean() < 8  # only yuv420p chroma loss
    assert read_video(path, max_frames=5).num_frames == 5
    assert read_video(path, max_seconds=0.5).num_frames == 11
    half = resample_fps(video, 10.0, 10)  # every second frame: same speed at half the rate
    assert np.array_equal(half, video.frames[::2])
    with pytest.raises(MediaError, match="too short"):
        resample_fps(video, 10.0, 11, path=str(path))
    fitted = fit_frames(video.frames, 32, 32)  # 48x64 -> covers 32x32 at 32x43, centre crop
    assert fitted.shape == (20, 32, 32, 3)


def test_media_errors_name_the_file(tmp_path):
    with pytest.raises(MediaError, match="file not found"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(MediaError, match=r"junk\.mp4"):
        read_video(tmp_path / "junk.mp4")
    with pytest.raises(MediaError, match="even frame sizes"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 5, 6, 3), np.uint8), 8.0)
