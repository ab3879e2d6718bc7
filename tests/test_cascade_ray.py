"""``labeler.batch --ray ... --cascade-from metrics`` on a real local Ray: the same records as the
one-process cascade, and the main judge (the local stand-in) asked only about the escalated segments."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from labeler.schemas import read_records  # noqa: E402
from labeler.standin import StandinServer  # noqa: E402
from tests.conftest import level_pairs_manifest  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    ray.init(num_cpus=3, include_dashboard=False, logging_level="warning")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def cascade_cli(
    manifest: Path, out: Path, server: StandinServer, cache: Path, *extra: str
) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "labeler.batch", str(manifest), "--out", str(out), "--quiet"]
    argv += ["--judge", "openai", "--model", "standin-vlm", "--base-url", server.base_url]
    argv += ["--cache-dir", str(cache), "--frames-per-segment", "4", "--judge-processes", "0"]
    argv += ["--cascade-from", "metrics", "--escalate-share", "0.4", *extra]
    env = {**os.environ, "OPENAI_API_KEY": "test-key"}  # read after ray.init (RAY_AUTH_MODE)
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)


def test_cascade_on_ray_matches_one_process(local_ray: str, tmp_path: Path) -> None:
    manifest = level_pairs_manifest(tmp_path / "pairs", 4, 3, a=(100, 3), b=(104, -3), fps=8.0)
    with StandinServer(policy="hash") as server:
        local = cascade_cli(manifest, tmp_path / "local.jsonl", server, tmp_path / "c1")
        assert local.returncode == 0, local.stderr
        sent_local = server.stats()["requests_total"]
        on_ray = cascade_cli(
            manifest,
            tmp_path / "ray.jsonl",
            server,
            tmp_path / "c2",
            "--ray",
            local_ray,
            "--ray-workers",
            "1",
        )
        assert on_ray.returncode == 0, on_ray.stderr
        sent_ray = server.stats()["requests_total"] - sent_local
    strip = {"usage"}
    want = {r.pair_id: r.model_dump(exclude=strip) for r in read_records(tmp_path / "local.jsonl")}
    got = {r.pair_id: r.model_dump(exclude=strip) for r in read_records(tmp_path / "ray.jsonl")}
    assert got == want and len(got) == 4
    escalated = sum(s["decided_by"] == "openai" for r in got.values() for s in r["segments"])
    assert escalated == round(0.4 * 12) and sent_ray == sent_local == 2 * escalated
    assert "escalated  5 of 12 segments" in on_ray.stdout
