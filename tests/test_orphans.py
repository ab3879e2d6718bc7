"""A killed labeler.batch leaves nothing behind (#24): its metrics judge's worker processes end
with it and its shared memory blocks are removed, after SIGKILL (the workers notice, in
labeler.orphan_guard) and after SIGTERM (handled as Ctrl-C: every clean-up runs)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from labeler.media import video
from tests.conftest import textured_frames
from tests.test_batch_cli import REPO
from tests.test_batch_hostile import pair, write_manifest

PAIRS = 24
#: Generous: the test waits for a state, never asserts how fast it came (a loaded 2-core machine).
PATIENCE_S = 120.0


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting after {PATIENCE_S:g} s for {what}")
        time.sleep(0.2)


def _blocks(pid: int) -> list[str]:
    return glob.glob(f"/dev/shm/densepref_{pid}_*")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    for k in range(4):  # 4 s each: a run of 24 pairs lasts well past the kill
        video.write_video(root / f"v{k}.mp4", textured_frames(96, h=128, w=192, seed=k), 24.0, crf=20)
    rows = [pair(root, f"p{i}", f"v{i % 4}.mp4", f"v{(i + 1) % 4}.mp4") for i in range(PAIRS)]
    return write_manifest(root / "m.jsonl", rows)


def _start(manifest: Path, tmp_path: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    cmd = [sys.executable, "-m", "labeler.batch", str(manifest), "--out", str(tmp_path / "o.jsonl"),
           "--judge-processes", "2", "--no-cache", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    # at work: two workers started and frames already in shared memory
    _wait_for(lambda: len(parent.children()) >= 2 and _blocks(proc.pid), "the workers and their first block")
    return proc, parent.children(recursive=True)


def _gone(workers: list[psutil.Process]) -> bool:
    return not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_sigkill_leaves_no_worker_and_no_shared_memory(manifest, tmp_path):
    proc, workers = _start(manifest, tmp_path)
    proc.kill()
    proc.wait()
    _wait_for(lambda: _gone(workers), "the orphaned workers to exit")
    _wait_for(lambda: not _blocks(proc.pid), "the shared memory blocks to be removed")


def test_sigterm_stops_like_ctrl_c_and_cleans_up(manifest, tmp_path):
    proc, workers = _start(manifest, tmp_path)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    _wait_for(lambda: _gone(workers), "the workers to exit")
    assert not _blocks(proc.pid)
