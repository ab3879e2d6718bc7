"""``python -m labeler.batch`` against hostile and careless input (#15): real subprocesses, real
videos, real files. Nothing is lost, nothing hangs, and every bad input gets one clear line."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labeler import jobfiles
from labeler.media import video
from labeler.schemas import read_records
from labeler.standin import StandinServer
from tests.conftest import textured_frames
from tests.test_batch_cli import REPO, cli

FPS = 8.0
AS_ROOT = os.geteuid() == 0


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    video.write_video(root / "a.mp4", textured_frames(16, seed=1), FPS, crf=10)
    video.write_video(root / "b.mp4", textured_frames(16, seed=2), FPS, crf=10)
    video.write_video(root / "small.mp4", textured_frames(16, h=48, w=64, seed=3), FPS, crf=10)
    video.write_video(root / "tiny_a.mp4", textured_frames(16, h=8, w=8, seed=4), FPS, crf=10)
    video.write_video(root / "tiny_b.mp4", textured_frames(16, h=8, w=8, seed=5), FPS, crf=10)
    return root


def pair(clips: Path, pair_id: str, a: str = "a.mp4", b: str = "b.mp4", prompt: str = "a scene") -> dict:
    return {"pair_id": pair_id, "prompt": prompt, "video_a": str(clips / a), "video_b": str(clips / b)}


def label(manifest: Path, out: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli(str(manifest), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet", *extra)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, no traceback, every needle in the message."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- item 1: U+2028 and friends


def test_prompt_with_unicode_line_separators_round_trips_to_agreement(clips, tmp_path):
    prompt = "left\u2028right\u2029para\u0085next line"
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p\u2028", prompt=prompt), pair(clips, "q")])
    out = tmp_path / "out.jsonl"
    assert label(manifest, out, tmp_path).returncode == 0
    records = {r.pair_id: r for r in read_records(out, tolerate_truncated_tail=False)}
    assert records["p\u2028"].prompt == prompt
    rerun = label(manifest, out, tmp_path)  # resume reads it back too
    assert rerun.returncode == 0 and "2 already done" in rerun.stdout
    report_args = [
        "--pred",
        str(out),
        "--human",
        str(out),
        "--out",
        str(tmp_path / "report"),
        "--bootstrap",
        "0",
    ]
    agreement = subprocess.run(
        [sys.executable, "-m", "labeler.agreement", *report_args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert agreement.returncode == 0, agreement.stderr
    report = json.loads((tmp_path / "report" / "agreement.json").read_text())
    assert report["segment"]["accuracy_no_ties"] in (1.0, None)  # a file against itself


# --------------------------------------------------------------------------- item 3: one writer per --out


def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(clips, tmp_path):
    manifest = write_manifest(
        tmp_path / "m.jsonl", [pair(clips, f"p{i}", prompt=f"scene {i}") for i in range(3)]
    )
    out = tmp_path / "out.jsonl"
    with StandinServer(policy="hash") as server:
        server.control(latency_ms=400, max_concurrency=1)
        args = [str(manifest), "--out", str(out), "--judge", "openai", "--model", "standin-vlm"]
        args += ["--base-url", server.base_url, "--no-cache", "--quiet", "--concurrency", "1"]
        env = {**os.environ, "OPENAI_API_KEY": "test-key"}
        first = subprocess.Popen(
            [sys.executable, "-m", "labeler.batch", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while server.stats()["in_flight"] == 0:  # the first run holds the lock and is labeling
                assert first.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            second = cli(*args, env={"OPENAI_API_KEY": "test-key"})
            assert first.poll() is None, "the first run must still be running for this test to mean anything"
            one_line_error(second, "another labeler.batch run", str(out))
            server.control(latency_ms=0)
            assert first.wait(timeout=120) == 0
        finally:
            if first.poll() is None:
                first.kill()
    records = read_records(out)
    assert sorted(r.pair_id for r in records) == ["p0", "p1", "p2"]  # each exactly once


# --------------------------------------------------------------------------- item 4: --out not ours


def test_out_equal_to_the_manifest_is_refused(clips, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0")])
    before = manifest.read_bytes()
    one_line_error(label(manifest, manifest, tmp_path), "is the manifest itself")
    assert manifest.read_bytes() == before


def test_out_that_is_another_jsonl_with_pair_ids_is_refused(clips, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0")])
    other = write_manifest(tmp_path / "other.jsonl", [pair(clips, "p0")])  # a copy of a manifest
    before = other.read_bytes()
    one_line_error(label(manifest, other, tmp_path), "other.jsonl:1 is not a dense preference record")
    assert other.read_bytes() == before


# --------------------------------------------------------------------------- items 7 and 10: tiny frames


def test_frames_too_small_fail_per_pair_and_never_stop_the_run(clips, tmp_path):
    rows = [pair(clips, f"tiny{i}", "tiny_a.mp4", "tiny_b.mp4", prompt=f"t{i}") for i in range(7)]
    rows.append(pair(clips, "good"))
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out.jsonl"
    proc = label(manifest, out, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # some pairs failed; not 3 (stopped)
    assert "STOPPED" not in proc.stdout
    assert [r.pair_id for r in read_records(out)] == ["good"]
    errors = jobfiles.read_errors(jobfiles.errors_path_for(out))
    assert {errors[f"tiny{i}"].error.type for i in range(7)} == {"FramesTooSmallError"}


def test_max_side_too_small_for_the_judge_is_a_per_pair_error(clips, tmp_path):
    rows = [pair(clips, f"p{i}", prompt=f"s{i}") for i in range(6)]
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    proc = label(manifest, tmp_path / "out.jsonl", tmp_path, "--max-side", "8")
    assert proc.returncode == 1 and "STOPPED" not in proc.stdout
    assert "6 failed" in proc.stdout and "FramesTooSmallError" in proc.stdout


# --------------------------------------------------------------------------- item 8 and 23: manifest bytes


def test_a_non_utf8_line_fails_alone_with_its_line_number(clips, tmp_path):
    manifest = tmp_path / "m.jsonl"
    good = json.dumps(pair(clips, "good")).encode()
    bad = json.dumps(pair(clips, "bad", prompt="caf\u00e9")).encode().replace(b"caf\\u00e9", b"caf\xe9")
    manifest.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + bad + b"\n")  # a BOM too (item 23)
    out = tmp_path / "out.jsonl"
    proc = label(manifest, out, tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert [r.pair_id for r in read_records(out)] == ["good"]  # the BOM did not spoil line 1
    errors = list(jobfiles.read_errors(jobfiles.errors_path_for(out)).values())
    assert len(errors) == 1 and errors[0].line == 2 and errors[0].error.type == "ManifestEncodingError"
    assert "line 2" in errors[0].error.message
    dry = cli(str(manifest), "--dry-run", "--cache-dir", str(tmp_path / "cache"))
    assert dry.returncode == 0 and "Traceback" not in dry.stderr
    assert "problem: line 2: not UTF-8" in dry.stdout


def test_a_duplicate_pair_id_stays_in_the_errors_file(clips, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0"), pair(clips, "p0")])
    out = tmp_path / "out.jsonl"
    for _ in range(2):
        assert label(manifest, out, tmp_path).returncode == 1
        errors = jobfiles.read_errors(jobfiles.errors_path_for(out))
        assert errors["p0"].error.type == "DuplicatePairId" and errors["p0"].line == 2


def test_a_manifest_that_is_a_directory_says_so(tmp_path):
    one_line_error(cli(str(tmp_path), "--out", str(tmp_path / "o.jsonl")), "is a directory")


# --------------------------------------------------------------------------- item 9: Retry-After cap


def test_a_huge_retry_after_does_not_hang_the_run(clips, tmp_path):
    manifest = write_manifest(
        tmp_path / "m.jsonl", [pair(clips, "slow", prompt="throttled"), pair(clips, "ok")]
    )
    out = tmp_path / "out.jsonl"
    with StandinServer(policy="hash") as server:
        server.control(rules=[{"match": "throttled", "status": 429, "retry_after": 100000}])
        args = ["--judge", "openai", "--model", "standin-vlm", "--base-url", server.base_url]
        args += ["--max-attempts", "2", "--max-retry-after", "5"]
        proc = cli(
            str(manifest), "--out", str(out), "--no-cache", "--quiet", *args, env={"OPENAI_API_KEY": "k"}
        )
    assert proc.returncode == 1, proc.stderr
    assert [r.pair_id for r in read_records(out)] == ["ok"]
    error = jobfiles.read_errors(jobfiles.errors_path_for(out))["slow"].error
    assert "over --max-retry-after 5 s" in error.message


# --------------------------------------------------------------------------- item 20: files checked first


@pytest.mark.parametrize("case", ["out_is_dir", "parent_is_file", "out_read_only"])
def test_unusable_out_is_one_line_before_any_work(clips, tmp_path, case):
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0")])
    if case == "out_is_dir":
        out, needle = tmp_path / "dir.jsonl", "is a directory"
        out.mkdir()
    elif case == "parent_is_file":
        (tmp_path / "afile").write_text("x")
        out, needle = tmp_path / "afile" / "sub" / "o.jsonl", "afile is a file"
    else:
        if AS_ROOT:  # root writes through chmod 555; /sys refuses even root
            out = Path("/sys/densepref-o.jsonl")
        else:
            (tmp_path / "ro").mkdir(mode=0o555)
            out = tmp_path / "ro" / "o.jsonl"
        needle = "cannot write there"
    proc = label(manifest, out, tmp_path)
    one_line_error(proc, f"--out {out}", needle)
    assert not (tmp_path / "cache").exists() or case != "out_read_only"


def _foreign_sqlite(folder: Path) -> None:
    folder.mkdir()
    db = sqlite3.connect(folder / "cache.db")
    db.execute("create table Cache (something text)")
    db.commit()
    db.close()


@pytest.mark.parametrize("case", ["file", "garbage", "foreign", "read_only"])
def test_unusable_cache_dir_is_one_line_before_any_work(clips, tmp_path, case):
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0")])
    cache = tmp_path / "cache"
    if case == "file":
        cache.write_text("x")
    elif case == "garbage":
        cache.mkdir()
        (cache / "cache.db").write_bytes(b"not a database at all" * 50)
    elif case == "foreign":
        _foreign_sqlite(cache)
    elif AS_ROOT:
        cache = Path("/sys/kernel/densepref-cache")
    else:
        cache.mkdir(mode=0o555)
    out = tmp_path / "o.jsonl"
    proc = cli(str(manifest), "--out", str(out), "--cache-dir", str(cache), "--quiet")
    one_line_error(proc, f"--cache-dir {cache}")
    assert not out.exists()  # nothing was labeled


# --------------------------------------------------------------------------- item 21: option values


@pytest.mark.parametrize(
    "option, value",
    [
        ("--segment-seconds", "nan"),
        ("--segment-seconds", "inf"),
        ("--segment-seconds", "1e308"),
        ("--timeout", "nan"),
        ("--timeout", "inf"),
        ("--timeout", "1e308"),
        ("--max-requests", "-1"),
        ("--max-cost", "-1"),
        ("--max-cost", "nan"),
        ("--max-retry-after", "nan"),
    ],
)
def test_unusable_option_values_are_usage_errors(clips, tmp_path, option, value):
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0")])
    proc = label(manifest, tmp_path / "o.jsonl", tmp_path, f"{option}={value}")
    one_line_error(proc, option)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_zero_budget_labels_only_what_the_cache_holds(clips, tmp_path):
    # 0 is a budget, not a usage error: a rerun with --max-requests 0 writes the cached pair and
    # stops cleanly (exit 3) before sending anything for the uncached one.
    cached = write_manifest(tmp_path / "cached.jsonl", [pair(clips, "p0")])
    assert label(cached, tmp_path / "warm.jsonl", tmp_path).returncode == 0
    both = write_manifest(
        tmp_path / "both.jsonl", [pair(clips, "p0"), pair(clips, "p1", a="b.mp4", b="a.mp4")]
    )
    for option in ("--max-requests=0", "--max-cost=0"):
        out = tmp_path / f"out{option[6:10]}.jsonl"
        proc = label(both, out, tmp_path, option)
        assert proc.returncode == 3, proc.stderr
        assert [r.pair_id for r in read_records(out)] == ["p0"], option
        assert "requests 0," in proc.stdout, proc.stdout


# --------------------------------------------------------------------------- item 22: A/B size mismatch


def test_the_dry_run_names_an_ab_size_mismatch(clips, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "odd", b="small.mp4"), pair(clips, "ok")])
    proc = cli(str(manifest), "--dry-run", "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    problem = [line for line in proc.stdout.splitlines() if "problem: odd" in line]
    assert problem, proc.stdout
    assert (
        "small.mp4" in problem[0]
        and "64x48" in problem[0]
        and "96x64" in problem[0]
        and "a.mp4" in problem[0]
    )
    assert "bad_pairs     1" in proc.stdout
