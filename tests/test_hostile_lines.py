"""Hostile input found by #24: each bad line, file or option fails alone with one clear message, and
every other pair is labelled. Real subprocesses, real videos, real special files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labeler import jobfiles
from labeler.media import video
from labeler.schemas import ManifestEntry, ManifestLineError, iter_manifest, read_records
from tests.conftest import textured_frames
from tests.test_batch_cli import REPO
from tests.test_batch_hostile import FPS, label, one_line_error, pair, write_manifest


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    video.write_video(root / "a.mp4", textured_frames(16, seed=1), FPS, crf=10)
    video.write_video(root / "b.mp4", textured_frames(16, seed=2), FPS, crf=10)
    return root


#: (name, raw JSON line written as is, error type, words of the message)
BAD_LINES = [
    ("prompt_surrogate", '{{"pair_id":"s1","prompt":"\\ud800","video_a":"{a}","video_b":"{b}"}}',
     "ManifestEncodingError", "prompt: lone surrogate"),
    ("pair_id_surrogate", '{{"pair_id":"x\\ud800","prompt":"p","video_a":"{a}","video_b":"{b}"}}',
     "ManifestEncodingError", "pair_id: lone surrogate"),
    ("meta_surrogate", '{{"pair_id":"s3","prompt":"p","video_a":"{a}","video_b":"{b}","meta":{{"k":["\\udc00"]}}}}',
     "ManifestEncodingError", "meta.k.0: lone surrogate"),
    ("meta_key_surrogate", '{{"pair_id":"s4","prompt":"p","video_a":"{a}","video_b":"{b}","meta":{{"\\udc00":1}}}}',
     "ManifestEncodingError", "lone surrogate"),
    ("huge_int", '{{"pair_id":"s5","prompt":"p","video_a":"{a}","video_b":"{b}","meta":{{"n":' + "9" * 5000 + "}}}}",
     "ManifestJSONError", "4300 digits"),
    ("nul_in_path", '{{"pair_id":"s6","prompt":"p","video_a":"{a}\\u0000x","video_b":"{b}"}}',
     "ManifestValidationError", "NUL"),
    ("symlink_loop", '{{"pair_id":"s7","prompt":"p","video_a":"loop/x.mp4","video_b":"{b}"}}',
     "ManifestPathError", "loop/x.mp4"),
]  # fmt: skip


def _bad_manifest(clips: Path, folder: Path) -> Path:
    (folder / "loop").symlink_to("loop")
    lines = [line.format(a=clips / "a.mp4", b=clips / "b.mp4") for _, line, _, _ in BAD_LINES]
    good = [
        f'{{"pair_id":"good{i}","prompt":"p","video_a":"{clips / "a.mp4"}","video_b":"{clips / "b.mp4"}"}}'
        for i in range(2)
    ]
    manifest = folder / "m.jsonl"
    manifest.write_text("\n".join([good[0], *lines, good[1]]) + "\n", encoding="utf-8")
    return manifest


def test_every_hostile_line_is_one_manifest_error(clips, tmp_path):
    items = list(iter_manifest(_bad_manifest(clips, tmp_path)))
    assert [type(i) for i in items] == [ManifestEntry, *[ManifestLineError] * len(BAD_LINES), ManifestEntry]
    for item, (name, _, etype, words) in zip(items[1:-1], BAD_LINES, strict=True):
        assert isinstance(item, ManifestLineError)
        assert item.type == etype and words in item.message, (name, item)
        item.message.encode("utf-8")  # writable: no surrogate reaches the errors file
        item.pair_id.encode("utf-8")


def test_hostile_lines_fail_alone_and_the_other_pairs_are_labelled(clips, tmp_path):
    manifest = _bad_manifest(clips, tmp_path)
    out = tmp_path / "out.jsonl"
    proc = label(manifest, out, tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(r.pair_id for r in read_records(out)) == ["good0", "good1"]
    errors = jobfiles.read_error_log(jobfiles.errors_path_for(out))
    assert sorted(line for _, line in errors) == list(range(2, 2 + len(BAD_LINES)))
    again = label(manifest, out, tmp_path)  # and on every rerun
    assert again.returncode == 1 and "2 already done" in again.stdout


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "fifo"])
def test_a_device_or_fifo_as_a_video_fails_its_pair_alone(clips, tmp_path, special):
    if special == "fifo":
        os.mkfifo(tmp_path / "fifo.mp4")
        special = str(tmp_path / "fifo.mp4")
    rows = [pair(clips, "good"), {**pair(clips, "bad"), "video_b": special}]
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out.jsonl"
    proc = label(manifest, out, tmp_path)  # before the fix: stuck reading the device forever
    assert proc.returncode == 1, proc.stderr
    assert [r.pair_id for r in read_records(out)] == ["good"]
    error = jobfiles.read_errors(jobfiles.errors_path_for(out))["bad"].error
    assert "not a regular file" in error.message and special in error.message


@pytest.mark.parametrize("special", ["/dev/null", "/dev/zero", "fifo"])
def test_an_out_that_is_not_a_regular_file_is_refused(clips, tmp_path, special):
    if special == "fifo":
        os.mkfifo(tmp_path / "fifo.jsonl")
        special = str(tmp_path / "fifo.jsonl")
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0")])
    one_line_error(label(manifest, Path(special), tmp_path), f"--out {special}", "not a regular file")
    assert not Path(special + ".lock").exists()


def test_a_hard_linked_out_is_refused(clips, tmp_path):
    """The output lock is OUT.lock, by name: another name of the same file would bypass it."""
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0")])
    out = tmp_path / "out.jsonl"
    assert label(manifest, out, tmp_path).returncode == 0
    os.link(out, tmp_path / "other.jsonl")
    one_line_error(label(manifest, tmp_path / "other.jsonl", tmp_path), "2 names (hard links)")


def test_an_empty_cache_dir_is_refused(clips, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0")])
    proc = subprocess.run(
        [sys.executable, "-m", "labeler.batch", str(manifest), "--out", str(tmp_path / "o.jsonl"), "--cache-dir", ""],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    one_line_error(proc, "--cache-dir", "empty name")
    assert not (tmp_path / "cache.db").exists()


def test_workers_are_capped_by_the_pairs(clips, tmp_path):
    """--concurrency 1e8 on one pair made 5e7 idle workers (2 GiB) before the cap."""
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0")])
    proc = label(manifest, tmp_path / "o.jsonl", tmp_path, "--concurrency", "100000000")
    assert proc.returncode == 0, proc.stderr


def test_the_video_readers_are_imported_before_any_decode_thread():
    """Their first import in two decode threads at once raised _DeadlockError (#24)."""
    code = (
        "import sys\n"
        "from labeler.engine import Engine\n"
        "from tests.fake_judges import BrightnessJudge\n"
        "assert 'av' not in sys.modules\n"
        "Engine(BrightnessJudge())\n"
        "assert 'av.video.reformatter' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
