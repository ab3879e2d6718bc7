"""Preference data for training: pair selection, latent/text caching, batching, media helpers."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tests.conftest import textured_frames
from tests.trainer.conftest import make_record, write_records
from trainer.data import (
    SKIP_REASONS,
    DataError,
    Geometry,
    PreferenceDataset,
    build_dataset,
    collate,
    read_preferences,
    select_pairs,
    window_record,
)
from trainer.latents import latent_frame_labels
from trainer.media import MediaError, fit_frames, read_video, resample_fps, write_video

TINY = Geometry(33, 64, 64)


def select(path, num_frames=33, **kw):
    """select_pairs with the tiny preset's window (33 frames, r = 4) unless told otherwise."""
    return select_pairs(path, num_frames=num_frames, temporal_compression=4, **kw)


def test_select_pairs_keeps_clips_with_more_than_20_percent_nontie(tmp_path):
    fifths = [(0, 9), (9, 13), (13, 17), (17, 25), (25, 33)]  # five segments, each holding latent frames
    records = [
        make_record("quarter", ["A", "tie", "tie", "tie"]),  # 25 % > 20 %: kept
        make_record("fifth", ["A", "tie", "tie", "tie", "tie"], bounds=fifths),  # 20 %: not above, dropped
        make_record("none", ["tie", "tie", "tie", "tie"]),
        make_record("even", ["A", "B", "tie", "tie"]),  # video label tie: dense keeps it, vanilla drops it
    ]
    path = write_records(tmp_path / "labels.jsonl", records)
    kept, skipped = select(path)
    assert [r.pair_id for r in kept] == ["quarter", "even"]
    assert skipped == {"few_nontie": 2}
    kept, skipped = select(path, mode="vanilla")
    assert [r.pair_id for r in kept] == ["quarter"]
    assert skipped == {"few_nontie": 2, "tie_video": 1}
    kept, _ = select(path, min_nontie_fraction=0.0)
    assert [r.pair_id for r in kept] == ["quarter", "fifth", "even"]
    kept, _ = select(path, min_nontie_fraction=0.3)
    assert [r.pair_id for r in kept] == ["even"]


def test_select_pairs_on_an_empty_file_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no preference records"):
        select(tmp_path / "empty.jsonl")


def test_a_pair_whose_preferences_all_lie_past_the_window_is_skipped_by_reason(tmp_path):
    # Six 1 s segments at 8 fps (49 frames); the only non-tie ones start at frame 32, past what the
    # 33-frame window trains on (frame 32 alone holds no whole latent frame of that segment).
    late = make_record("late", ["tie", "tie", "tie", "tie", "A", "A"], num_frames=49)
    short = make_record("short", ["A", "B"], num_frames=16)
    path = write_records(tmp_path / "labels.jsonl", [late, short])
    for mode in ("dense", "vanilla"):
        kept, skipped = select(path, mode=mode)
        assert kept == []
        assert skipped == {"few_nontie_in_window": 1, "shorter_than_window": 1}
    kept, skipped = select(path, num_frames=49, mode="vanilla")  # over the whole video it would pass
    assert [r.pair_id for r in kept] == ["late"] and skipped == {"shorter_than_window": 1}
    assert set(SKIP_REASONS) >= set(skipped)


def test_the_video_label_and_the_filter_use_only_the_segments_inside_the_window(tmp_path):
    flipped = make_record("flipped", ["B", "tie", "tie", "A", "A"], num_frames=41)
    assert flipped.video_label == "A"  # over the whole video
    path = write_records(tmp_path / "labels.jsonl", [flipped])
    # A 17-frame window holds latent frames [0,1) [1,5) [5,9) [9,13) [13,17): whole ones in B [0,8)
    # and tie [8,16); [16,17) of the next tie segment holds none, so that segment does not count.
    kept, skipped = select(path, num_frames=17, mode="vanilla")
    assert not skipped
    window = kept[0]
    assert window.video_label == "B"
    assert [(s.index, s.start_frame, s.end_frame, s.label) for s in window.segments] == [
        (0, 0, 8, "B"),
        (1, 8, 16, "tie"),
    ]
    assert window.num_frames == 17
    # With the window cut at 33 frames the two A segments are inside ([24,32) whole, [32,41) holds no
    # latent frame): one A against one B is a tie, which vanilla DPO skips, saying why.
    _, skipped = select(path, num_frames=33, mode="vanilla")
    assert skipped == {"tie_video_in_window": 1}


def test_window_record_needs_labels_as_long_as_the_window():
    with pytest.raises(DataError, match="pair x: labels cover 16 frames, training needs 33"):
        window_record(make_record("x", ["A", "B"], num_frames=16), 33, 4)


def test_labels_with_unicode_line_separators_in_a_prompt_are_read_whole(tmp_path):
    prompt = "a dog\u2028runs\u2029across\u0085the yard"
    records = [
        make_record("odd", ["A", "B", "tie", "A"], prompt=prompt),
        make_record("plain", ["B", "A", "B", "B"]),
    ]
    path = write_records(tmp_path / "labels.jsonl", records)
    text = path.read_text(encoding="utf-8")
    assert all(ch in text for ch in "\u2028\u2029\u0085")  # raw in the file, not escaped
    assert len(text.splitlines()) > 2  # what str.splitlines would have made of it
    kept, skipped = select(path)
    assert [(r.pair_id, r.prompt) for r in kept] == [("odd", prompt), ("plain", "a test clip")]
    assert not skipped


def test_a_torn_last_line_is_ignored_and_a_bad_line_is_named(tmp_path):
    good = make_record("good", ["A", "B", "tie", "A"]).model_dump_json()
    (tmp_path / "torn.jsonl").write_text(good + "\n" + good[:40], encoding="utf-8")
    assert [r.pair_id for r in read_preferences(tmp_path / "torn.jsonl")] == ["good"]
    (tmp_path / "bad.jsonl").write_text(good[:40] + "\n" + good + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: "):
        read_preferences(tmp_path / "bad.jsonl")
    (tmp_path / "fields.jsonl").write_text(good + "\n" + '{"pair_id": "y"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"fields\.jsonl:2: .*prompt"):
        read_preferences(tmp_path / "fields.jsonl")


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


def test_a_windowed_pair_trains_on_the_windows_label_and_masks(pair_files, tiny_adapter):
    root, _ = pair_files
    flipped = make_record("flipped", ["B", "tie", "tie", "A", "A"], video_a="clip0.mp4", video_b="clip1.mp4",
                          num_frames=41)  # fmt: skip
    path = write_records(root / "labels.jsonl", [flipped])
    kept, _ = select(path, num_frames=17, mode="vanilla")
    item = build_dataset(kept, tiny_adapter, Geometry(17, 64, 64), root / "cache", root)[0]
    assert item["video_label"].item() == -1  # B, not the whole video's A
    assert item["labels"].tolist() == [-1, -1, 0, 0, 0]  # [0,1) [1,5) in B; [5,9) straddles; ties
    assert item["latents_a"].shape == (16, 5, 8, 8)


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
