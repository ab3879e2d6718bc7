"""``labeler.batch --ray`` on a real local Ray (2 worker actors): the same records as a one-process
run, kill -9 of a worker mid-run, kill -9 of the driver then resume, node-local judgment caches,
and the GPU request reaching the actors. One Ray per module (it is slow to start); it declares 2
logical GPUs so that ``--ray-gpus-per-worker`` can be checked without a real one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ray = pytest.importorskip("ray")

from labeler import jobfiles  # noqa: E402
from labeler.batch import build_parser  # noqa: E402
from labeler.cli_options import (  # noqa: E402
    cache_from_args,
    engine_from_args,
    ray_options_from_args,
    spec_from_args,
)
from labeler.media.video import write_video  # noqa: E402
from labeler.runners.local import run_batch  # noqa: E402
from labeler.runners.ray.ray_runner import RayRun, run_batch_on_ray  # noqa: E402
from labeler.standin import StandinServer  # noqa: E402
from tests.conftest import textured_frames  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PAIRS = 8
#: One id with a line separator (U+2028) and a non-Latin letter: JSONL must be split on "\n" only,
#: and the id must cross Arrow, Ray's object store and the driver's writer unchanged.
IDS = [f"p{i}" if i != 3 else "p3\u2028ж" for i in range(PAIRS)]


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[str]:
    """A local Ray: 4 logical CPUs for 2 actors plus the reading tasks, 2 logical GPUs."""
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, logging_level="warning")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PAIRS pairs of 2 s clips (A sharp, B blurred by heavy compression or the other way round),
    a line that is not JSON and a pair whose video is missing."""
    root = tmp_path_factory.mktemp("ray_pairs")
    lines = []
    for i in range(PAIRS):
        frames = textured_frames(24, seed=i, motion=1 + i % 3)
        sharp, blurred = (10, 45) if i % 2 else (45, 10)
        a = write_video(root / f"a{i}.mp4", frames, 12.0, crf=sharp)
        b = write_video(root / f"b{i}.mp4", frames, 12.0, crf=blurred)
        lines.append(
            json.dumps(
                {"pair_id": IDS[i], "prompt": f"scene {i}", "video_a": a.name, "video_b": b.name},
                ensure_ascii=False,  # the raw separator in the manifest, as a hostile file has it
            )
        )
    lines.append("{not json")
    lines.append(json.dumps({"pair_id": "gone", "prompt": "x", "video_a": "nope.mp4", "video_b": "a0.mp4"}))
    path = root / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def clean_manifest(manifest: Path) -> Path:
    """The same pairs without the two bad lines: a run of it exits 0."""
    clean = manifest.with_name("clean.jsonl")
    lines = manifest.read_text(encoding="utf-8").split("\n")
    clean.write_text("\n".join(lines[:PAIRS]) + "\n", encoding="utf-8")
    return clean


def parse(*argv: str):
    return build_parser().parse_args(["m.jsonl", "--out", "o.jsonl", *argv])


def run_on_ray(manifest: Path, out: Path, *argv: str) -> RayRun:
    args = parse("--ray", *argv)
    spec = spec_from_args(args)  # validated like the CLI's; its engine config carries the budgets
    options = ray_options_from_args(args, args.workers or 2)
    assert options is not None
    return run_batch_on_ray(manifest, out, spec, options, progress=False)


def run_one_process(manifest: Path, out: Path, *argv: str):
    import asyncio

    engine = engine_from_args(parse(*argv))

    async def go():
        try:
            return await run_batch(manifest, out, engine, workers=2, progress=False)
        finally:
            await engine.aclose()

    return asyncio.run(go())


def records_by_pair(path: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    counts = Counter(r["pair_id"] for r in lines)
    assert max(counts.values()) == 1, f"pairs written more than once: {counts.most_common(3)}"
    return {r["pair_id"]: r for r in lines}


def error_ids(out: Path) -> set[str]:
    return set(jobfiles.read_errors(jobfiles.errors_path_for(out)))


def test_metrics_judge_on_ray_writes_what_one_process_writes_and_reserves_gpus(
    manifest: Path, tmp_path: Path
) -> None:
    # A small tie margin: the compression gap must decide segments, so that equal records mean
    # equal labels and probabilities, not a run of ties that any two runs would share.
    common = ("--judge", "metrics", "--no-cache", "--tie-margin", "0.05")
    one = run_one_process(manifest, tmp_path / "one.jsonl", *common)
    run = run_on_ray(
        manifest,
        tmp_path / "ray.jsonl",
        *common,
        "--ray-workers",
        "2",
        "--workers",
        "2",
        "--ray-gpus-per-worker",
        "1",
    )
    expected, got = records_by_pair(tmp_path / "one.jsonl"), records_by_pair(tmp_path / "ray.jsonl")
    assert set(got) == set(IDS) and got == expected  # every field, labels and probabilities included
    assert {s["label"] for r in got.values() for s in r["segments"]} >= {"A", "B"}
    assert error_ids(tmp_path / "ray.jsonl") == error_ids(tmp_path / "one.jsonl") == {"<line 9>", "gone"}
    assert (run.result.ok, run.result.failed, run.result.stopped) == (one.ok, one.failed, None)
    assert run.stats.segments == sum(len(r["segments"]) for r in got.values())
    assert run.stats.requests == 2 * run.stats.segments  # both orders of every segment, summed over actors
    # --ray-gpus-per-worker 1 on a cluster of 2 (logical) GPUs: each actor holds one of its own
    # (Ray sets its CUDA_VISIBLE_DEVICES to it); without the option an actor holds none.
    gpus = [w["gpus"] for w in run.workers.values()]
    assert gpus and all(len(g) == 1 for g in gpus) and len({g[0] for g in gpus}) == len(gpus)

    again = run_on_ray(manifest, tmp_path / "ray.jsonl", *common)
    # Resumed: only the pair that failed is tried again (the bad line is re-read, not sent).
    assert (again.result.skipped, again.result.ok, again.stats.requests) == (PAIRS, 0, 0)
    assert [w["gpus"] for w in again.workers.values()] == [[]]
    assert error_ids(tmp_path / "ray.jsonl") == {"<line 9>", "gone"}  # retried and failed again
    assert jobfiles.read_errors(jobfiles.errors_path_for(tmp_path / "ray.jsonl"))["gone"].attempts == 2


def _kill_a_worker_mid_chunk(server: StandinServer, killed: list[int]) -> None:
    """Once judge requests are in flight, kill -9 one of this test's Ray Data actor processes."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not killed:
        if server.stats()["in_flight"] > 0:
            for proc in psutil.Process().children(recursive=True):
                try:
                    title = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                if "PairLabeler" in title:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                    return
        time.sleep(0.05)


def standin_args(server: StandinServer, cache: Path) -> tuple[str, ...]:
    return (
        "--judge", "openai", "--model", "standin-vlm", "--base-url", server.base_url, "--cache-dir",
        str(cache), "--frames-per-segment", "4",
    )  # fmt: skip


def cli(
    manifest: Path, out: Path, server: StandinServer, cache: Path, address: str, *extra: str
) -> list[str]:
    return [
        sys.executable, "-m", "labeler.batch", str(manifest), "--out", str(out), "--quiet",
        *standin_args(server, cache), "--ray", address, *extra,
    ]  # fmt: skip


def cli_env() -> dict[str, str]:
    """Read after ray.init: it sets RAY_AUTH_MODE=token, which a driver joining the cluster needs."""
    return {**os.environ, "OPENAI_API_KEY": "test-key"}


def test_a_worker_killed_mid_run_costs_only_its_chunk_and_the_cache_serves_the_rerun(
    clean_manifest: Path,
    tmp_path: Path,
    standin: StandinServer,
    local_ray: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    one = run_one_process(
        clean_manifest, tmp_path / "one.jsonl", *standin_args(standin, tmp_path / "one-cache")
    )
    assert one.ok == PAIRS
    standin.control(reset=True, latency_ms=400)  # slow answers: the kill lands while a chunk is in flight
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_mid_chunk, args=(standin, killed), daemon=True)
    killer.start()
    cache, out = tmp_path / "node-cache", tmp_path / "ray.jsonl"
    argv = cli(clean_manifest, out, standin, cache, local_ray, "--ray-workers", "2", "--workers", "2")
    done = subprocess.run(argv, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=240)
    killer.join(timeout=5)
    assert len(killed) == 1, "no worker was killed: the test proved nothing"
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"{PAIRS} labeled, 0 failed" in done.stdout
    assert "worker process(es) on 1 node(s)" in done.stderr  # the driver's line about its actors
    got = records_by_pair(out)  # asserts each pair is there once
    expected = records_by_pair(tmp_path / "one.jsonl")
    assert {k: v["segments"] for k, v in got.items()} == {k: v["segments"] for k, v in expected.items()}
    assert not jobfiles.errors_path_for(out).exists()
    stats = standin.stats()
    # Only the judgments in flight in the killed actor were asked twice: one chunk of 2 pairs of
    # 2 segments in both orders, at most.
    assert len(stats["answered_twice"]) <= 2 * 2 * 2
    assert stats["answered"] >= 2 * 2 * PAIRS

    # The actors wrote their judgments to this node's cache: any later run on the node (a one-process
    # one here, which starts in a moment) labels a fresh OUT from it without asking anything.
    assert len(cache_from_args(parse(*standin_args(standin, cache)))) >= 2 * 2 * PAIRS
    standin.control(reset=True, latency_ms=0)
    rerun = run_one_process(clean_manifest, tmp_path / "fresh.jsonl", *standin_args(standin, cache))
    assert rerun.ok == PAIRS and standin.stats()["requests_total"] == 0


def test_driver_killed_mid_run_then_rerun_resumes_on_a_running_cluster(
    manifest: Path, tmp_path: Path, standin: StandinServer, local_ray: str
) -> None:
    """The CLI joins this module's cluster by address; kill -9 of the driver keeps what it wrote."""
    out = tmp_path / "out.jsonl"
    argv = cli(manifest, out, standin, tmp_path / "cache", local_ray, "--ray-workers", "1", "--workers", "1")
    env = cli_env()
    standin.control(latency_ms=400)
    driver = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None:
            if out.exists() and out.read_text(encoding="utf-8").count("\n") >= 2:
                break
            time.sleep(0.1)
        assert driver.poll() is None, f"the driver ended before it could be killed: {driver.communicate()}"
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait(timeout=30)
    partial = records_by_pair(out)
    assert 2 <= len(partial) < PAIRS

    standin.control(latency_ms=0)
    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 1, rerun.stderr[-3000:]  # 1: the two bad manifest lines, nothing else
    assert f"{len(partial)} already done" in rerun.stdout
    assert set(records_by_pair(out)) == set(IDS)
    assert error_ids(out) == {"<line 9>", "gone"}
