"""Latent-aligned segments: `labeler.batch --align-to-latent R` puts every boundary between segments
on a frame 1 + R*k, so no latent frame straddles two segments; the trainer counts the latent frames
it masks for straddling."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labeler.media.video import plan_segments
from labeler.schemas import ManifestEntry, iter_manifest, read_records
from tests.trainer.conftest import make_record, write_records
from trainer.config import parse_train_args
from trainer.latents import latent_frame_labels, num_latent_frames
from trainer.train import train


def alternating(bounds: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    return [(s, e, 1 if i % 2 == 0 else -1) for i, (s, e) in enumerate(bounds)]


def test_wan_clip_of_one_second_segments_loses_four_latent_frames_unless_aligned():
    # 81 frames at 16 fps: boundaries 16, 32, 48, 64 all fall inside latent frames.
    plain = plan_segments(81, 16.0, 1.0)
    mapped = latent_frame_labels(alternating(plain), num_latent_frames(81, 4), 4, 81)
    assert mapped.straddling == 4 and mapped.labels.count(0) == 4
    aligned = plan_segments(81, 16.0, 1.0, align_to=4)
    assert [s for s, _ in aligned[1:]] == [17, 33, 49, 65]
    mapped = latent_frame_labels(alternating(aligned), num_latent_frames(81, 4), 4, 81)
    assert mapped.straddling == 0 and 0 not in mapped.labels


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 400),
    fps=st.sampled_from([8.0, 12.0, 15.0, 16.0, 24.0, 29.97, 30.0]),
    seconds=st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0]),
    r=st.sampled_from([1, 2, 4, 8]),
)
def test_aligned_segments_tile_the_video_with_every_boundary_on_a_latent_start(n, fps, seconds, r):
    bounds = plan_segments(n, fps, seconds, align_to=r)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(s < e for s, e in bounds)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert all((s - 1) % r == 0 for s, _ in bounds[1:])
    mapped = latent_frame_labels(alternating(bounds), num_latent_frames(n, r), r, n)
    assert mapped.straddling == 0


def test_align_to_latent_must_be_positive():
    with pytest.raises(ValueError, match="align_to must be positive"):
        plan_segments(81, 16.0, 1.0, align_to=0)


@pytest.mark.slow
def test_batch_cli_aligns_every_boundary_and_the_trainer_counts_straddling_frames(
    tiny_pairs, tmp_path, capsys
):
    out = tmp_path / "labels.jsonl"
    cmd = [sys.executable, "-m", "labeler.batch", str(tiny_pairs), "--out", str(out), "--judge", "metrics",
           "--tie-margin", "0.05", "--cache-dir", str(tmp_path / "judge-cache"), "--quiet", "--align-to-latent", "4"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = read_records(out)
    assert len(records) == 4
    for record in records:  # 33 frames at 8 fps: 8, 16, 24 move to 9, 17, 25
        assert [s.start_frame for s in record.segments] == [0, 9, 17, 25]
        assert record.labeler.model_extra == record.labeler.model_extra | {"align_to_latent": 4}
    bad = subprocess.run([*cmd[:-1], "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--align-to-latent must be at least 1" in bad.stderr

    # Unaligned one-second segments A, B, A, B: latent frames [5, 9), [13, 17), [21, 25) straddle.
    entries = [e for e in iter_manifest(tiny_pairs) if isinstance(e, ManifestEntry)][:2]
    unaligned = [
        make_record(e.pair_id, ["A", "B", "A", "B"], video_a=str(e.video_a), video_b=str(e.video_b))
        for e in entries
    ]
    labels = write_records(tmp_path / "unaligned.jsonl", unaligned)
    argv = ["--tiny", "--prefs", str(labels), "--output-dir", str(tmp_path / "run"), "--steps", "1",
            "--eval-pairs", "0", "--report-to", "none"]  # fmt: skip
    summary = train(parse_train_args(argv), progress=False)
    assert summary["latent_frames"]["masked_straddling"] == 6
    assert "6 of 18 latent frames masked: they straddle segments" in capsys.readouterr().out
    aligned = [r.model_copy(update={"prompt": "x"}) for r in records[:2]]
    labels = write_records(Path(tmp_path / "aligned.jsonl"), aligned)
    argv[argv.index(str(tmp_path / "unaligned.jsonl"))] = str(labels)
    argv[argv.index(str(tmp_path / "run"))] = str(tmp_path / "run2")
    argv += ["--min-nontie-fraction", "0"]
    summary = train(parse_train_args(argv), progress=False)
    assert summary["latent_frames"]["masked_straddling"] == 0
