"""The batch CLI as a user runs it: the demo end to end, --help, usage errors, the hf judge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from labeler.media import video
from labeler.schemas import read_manifest, read_records
from tests.conftest import textured_frames

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m labeler.batch ARGS`` in a real subprocess; ``env`` adds to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "labeler.batch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def test_demo_end_to_end(tmp_path):
    demo = tmp_path / "demo"
    proc = cli("--demo", str(demo), "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    entries = read_manifest(demo / "manifest.jsonl")
    records = read_records(demo / "labels.jsonl")
    assert {r.pair_id for r in records} == {e.pair_id for e in entries}
    assert "labels  -> " in proc.stdout and "accuracy, no ties" in proc.stdout
    report = json.loads((demo / "agreement" / "agreement.json").read_text())
    assert report["segment"]["accuracy_no_ties"] >= 0.85  # the bar for the embedded judge
    assert (demo / "agreement" / "report.md").exists()
    assert str(demo / "agreement" / "report.md") in proc.stdout
    # a second run skips every pair and still prints the agreement
    again = cli("--demo", str(demo), "--cache-dir", str(tmp_path / "cache"))
    assert again.returncode == 0 and f"0 labeled, 0 failed, {len(entries)} already done" in again.stdout


def test_help_explains_the_options():
    proc = cli("--help")
    assert proc.returncode == 0
    for flag in (
        "--demo",
        "--judge",
        "--base-url",
        "--concurrency",
        "--no-swap",
        "--cache-dir",
        "--layout",
        "--openai-batch",
        "--dry-run",
        "--max-cost",
        "--workers",
        "--prompt",
    ):
        assert flag in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "give MANIFEST and --out"),
        (("nope.jsonl", "--out", "o.jsonl"), "manifest not found"),
        (
            ("--demo", "d", "--openai-batch"),
            "--openai-batch, --batch-export and --batch-import need --judge openai",
        ),
        (("--demo", "d", "--judge", "openai"), "--judge openai needs --model"),
        (("--demo", "d", "--frames-per-segment", "0"), "--frames-per-segment must be at least 1"),
        (("--demo", "d", "--segment-seconds", "nan"), "--segment-seconds must be a positive number"),
        ((".", "--out", "o.jsonl"), "manifest . is a directory"),
    ],
)
def test_usage_errors_are_clear(args, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "labeler.batch", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},  # this checkout, not the installed one
        timeout=60,
    )
    assert proc.returncode == 2
    assert message in proc.stderr


def test_hf_judge_from_the_cli(tmp_path):
    from tests.hf_tiny import build_tiny_vlm

    model = build_tiny_vlm(tmp_path / "tiny-vlm")
    frames = textured_frames(16, h=32, w=48)
    video.write_video(tmp_path / "a.mp4", frames, 8.0)
    video.write_video(tmp_path / "b.mp4", np.clip(frames.astype(int) + 40, 0, 255).astype(np.uint8), 8.0)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"pair_id": "p", "prompt": "a texture", "video_a": "a.mp4", "video_b": "b.mp4"})
    )
    out = tmp_path / "out.jsonl"
    args = (
        str(manifest),
        "--out",
        str(out),
        "--judge",
        "hf",
        "--model",
        str(model),
        "--frames-per-segment",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    )
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    (record,) = read_records(out)
    assert record.labeler.judge == "hf" and len(record.segments) == 2
    assert all(len(s.votes) == 2 for s in record.segments)
    assert "requests 4" in proc.stdout
    out.unlink()
    assert "requests 0, cache hits 4" in cli(*args).stdout
