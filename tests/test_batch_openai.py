"""The batch CLI with the openai judge against a real local OpenAI-compatible server (labeler.standin):
faults, position bias, kill -9 and resume, cache reruns, the Batch API mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labeler import jobfiles
from labeler.schemas import read_records
from labeler.standin import StandinServer
from tests.conftest import level_pairs_manifest

#: Minutes, not seconds (real processes, demo sets or whole benchmarks): left out of `-m "not slow"`.
pytestmark = pytest.mark.slow

FPS = 8.0
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    return level_pairs_manifest(root, 6, 3, a=(100, 10), b=(130, -10), fps=FPS)


@pytest.fixture
def server():
    with StandinServer(policy="hash") as srv:
        yield srv


def batch_args(manifest: Path, out: Path, server: StandinServer, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "labeler.batch",
        str(manifest),
        "--out",
        str(out),
        "--judge",
        "openai",
        "--model",
        "standin-vlm",
        "--base-url",
        server.base_url,
        "--cache-dir",
        str(cache),
        "--quiet",
        "--frames-per-segment",
        "4",
        *extra,
    ]


def run_cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENAI_API_KEY": "test-key"}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def strip(records):
    return {r.pair_id: r.model_dump(exclude={"usage"}) for r in records}


def test_faults_are_survived_and_a_failing_pair_fails_alone(manifest, server, tmp_path):
    server.control(
        faults=[
            {"status": 429, "retry_after": 0.05},
            {"status": 500},
            {"hang": "until_released"},  # the client's timeout fires first, however loaded the machine
            {"garbage": True},
            {"status": 503},
            {"status": 429, "retry_after_ms": 20},
        ],
        rules=[{"match": "scene 4", "status": 500}],
    )
    out = tmp_path / "out.jsonl"
    try:
        proc = run_cli(
            batch_args(manifest, out, server, tmp_path / "cache", "--timeout", "5", "--max-attempts", "4")
        )
    finally:
        server.control(release_hangs=True)  # answered now, long after the client gave up on it
    assert proc.returncode == 1, proc.stderr  # one pair failed
    records = read_records(out)
    assert sorted(r.pair_id for r in records) == ["p0", "p1", "p2", "p3", "p5"]
    assert len({r.pair_id for r in records}) == len(records)  # each labeled exactly once
    errors = jobfiles.read_errors(jobfiles.errors_path_for(out))
    assert list(errors) == ["p4"] and errors["p4"].error.type == "TransientJudgeError"
    assert "500" in errors["p4"].error.message
    stats = server.stats()
    assert stats["faults_served"] >= 6
    # Only the hung request is answered twice: the server finished it after the client had given up.
    assert len(stats["answered_twice"]) <= 1
    assert "retries" in proc.stdout and "1 failed" in proc.stdout


def test_position_bias_yields_inconsistent_ties(manifest, server, tmp_path):
    server.control(policy="first")
    out = tmp_path / "out.jsonl"
    proc = run_cli(batch_args(manifest, out, server, tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    segments = [s for r in read_records(out) for s in r.segments]
    assert len(segments) == 18
    assert all(s.label == "tie" and s.consistent is False for s in segments)
    assert all(r.video_label == "tie" for r in read_records(out))
    assert "order flips 100.0%" in proc.stdout


def test_second_identical_run_sends_nothing(manifest, server, tmp_path):
    out, cache = tmp_path / "out.jsonl", tmp_path / "cache"
    assert run_cli(batch_args(manifest, out, server, cache)).returncode == 0
    first = server.stats()["requests_total"]
    assert first == 6 * 3 * 2
    again = tmp_path / "again.jsonl"  # a new output file: every pair is labeled again, from the cache
    proc = run_cli(batch_args(manifest, again, server, cache))
    assert proc.returncode == 0, proc.stderr
    assert server.stats()["requests_total"] == first
    assert strip(read_records(again)) == strip(read_records(out))
    assert all(r.usage.cache_hits == 6 and r.usage.requests == 0 for r in read_records(again))


def test_kill_9_and_resume_gives_the_uninterrupted_result(manifest, server, tmp_path):
    reference = tmp_path / "reference.jsonl"
    assert run_cli(batch_args(manifest, reference, server, tmp_path / "cache-ref")).returncode == 0
    server.control(reset=True, latency_ms=150)

    out, cache = tmp_path / "out.jsonl", tmp_path / "cache"
    args = batch_args(manifest, out, server, cache, "--concurrency", "2", "--workers", "2")
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        env={**os.environ, "OPENAI_API_KEY": "k"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = time.time()
    done_before = len(out.read_text().splitlines())
    assert 2 <= done_before < 6, "the kill must land mid-job"
    time.sleep(0.5)  # let the server finish what was in flight
    answered_before = {
        e["hash"] for e in server.state.log if e["status"] == 200 and e["time"] < killed_at - 0.3
    }

    server.control(latency_ms=0)
    proc2 = run_cli(args)
    assert proc2.returncode == 0, proc2.stderr
    assert "already done" in proc2.stdout
    repeated = [e for e in server.state.log if e["time"] > killed_at + 0.5 and e["hash"] in answered_before]
    assert repeated == [], "a request answered before the kill was sent again"
    assert strip(read_records(out, tolerate_truncated_tail=False)) == strip(read_records(reference))


def test_openai_batch_api_mode_fills_the_cache_then_writes_records(manifest, server, tmp_path):
    out, cache = tmp_path / "out.jsonl", tmp_path / "cache"
    proc = run_cli(batch_args(manifest, out, server, cache, "--openai-batch", "--batch-poll-seconds", "0.05"))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "submitted OpenAI batch" in proc.stdout and "36 answers cached" in proc.stdout
    stats = server.stats()
    assert stats["batches"] == 1
    # the stand-in answers batch lines through its chat handler: 36 in all means none went online after
    assert stats["requests_total"] == 36 and not stats["answered_twice"]
    records = read_records(out)
    assert len(records) == 6 and all(r.usage.cache_hits == 6 for r in records)
    online = tmp_path / "online.jsonl"
    assert run_cli(batch_args(manifest, online, server, tmp_path / "cache2")).returncode == 0
    assert strip(read_records(online)) == strip(records)  # the batch answers are the online answers
    assert not list(tmp_path.glob("out.jsonl.openai-batch*"))  # state and input files cleaned up


def test_dry_run_sends_nothing_and_counts(manifest, server, tmp_path):
    proc = run_cli(batch_args(manifest, tmp_path / "o.jsonl", server, tmp_path / "cache", "--dry-run"))
    assert proc.returncode == 0, proc.stderr
    assert "requests      36" in proc.stdout and "images        288" in proc.stdout
    assert server.stats()["requests_total"] == 0
    assert not (tmp_path / "o.jsonl").exists()


def test_openai_batch_interrupted_while_waiting_resumes_the_same_batch(
    manifest, server, tmp_path, monkeypatch
):
    import asyncio

    from labeler.cache import JudgmentCache
    from labeler.engine import Engine, EngineConfig
    from labeler.judges.openai_api import OpenAIJudge
    from labeler.runners import batch_api as openai_batch

    def engine() -> Engine:
        judge = OpenAIJudge("standin-vlm", base_url=server.base_url, api_key="k")
        return Engine(judge, EngineConfig(frames_per_segment=4), JudgmentCache(tmp_path / "cache"))

    out = tmp_path / "out.jsonl"
    real_wait = openai_batch._wait_any

    async def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process died while polling

    monkeypatch.setattr(openai_batch, "_wait_any", killed)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(openai_batch.prefill_with_batch_api(manifest, out, engine(), poll_seconds=0.01))
    state = json.loads(openai_batch.state_path_for(out).read_text())
    assert len(state["files"]) == 1 and state["files"][0]["batch_id"]

    monkeypatch.setattr(openai_batch, "_wait_any", real_wait)
    eng = engine()
    report = asyncio.run(openai_batch.prefill_with_batch_api(manifest, out, eng, poll_seconds=0.01))
    assert report.batch_ids == [state["files"][0]["batch_id"]] and report.answered == 36
    assert server.stats()["batches"] == 1  # resumed, not paid for twice
    assert not openai_batch.state_path_for(out).exists()


def test_openai_batch_splits_large_jobs(manifest, server, tmp_path):
    import asyncio

    from labeler.cache import JudgmentCache
    from labeler.engine import Engine, EngineConfig
    from labeler.judges.openai_api import OpenAIJudge
    from labeler.runners import batch_api as openai_batch

    judge = OpenAIJudge("standin-vlm", base_url=server.base_url, api_key="k")
    eng = Engine(judge, EngineConfig(frames_per_segment=4), JudgmentCache(tmp_path / "cache"))
    report = asyncio.run(
        openai_batch.prefill_with_batch_api(
            manifest, tmp_path / "o.jsonl", eng, poll_seconds=0.01, max_lines=10
        )
    )
    assert len(report.batch_ids) == 4 and report.requests == 36 and report.answered == 36
    assert server.stats()["batches"] == 4
