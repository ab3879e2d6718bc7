"""A dead endpoint stops a run (#24 item 3): before any work, a missing key, an endpoint that cannot
be reached or a refused key is one exit-2 line naming what to fix; during a run, pairs failing to
connect several in a row (after their retries) stop it with exit 3 and "endpoint unreachable"."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from labeler.engine import Engine, EngineConfig
from labeler.judges.openai_api import OpenAIJudge
from labeler.media import video
from labeler.runners.local import UNREACHABLE_STREAK_LIMIT, run_batch
from labeler.schemas import read_records
from labeler.standin import StandinServer
from tests.conftest import textured_frames
from tests.test_batch_hostile import FPS, cli, one_line_error, pair, write_manifest

PAIRS = 12
WORKERS = 4
ATTEMPTS = 2


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    video.write_video(root / "a.mp4", textured_frames(16, seed=1), FPS, crf=10)
    video.write_video(root / "b.mp4", textured_frames(16, seed=2), FPS, crf=10)
    return write_manifest(root / "m.jsonl", [pair(root, f"p{i}") for i in range(PAIRS)])


def closed_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _HangUp(BaseHTTPRequestHandler):
    """Lists one model, and drops the connection of every other request without an answer: an
    endpoint whose front answers and whose backend is gone (preflight passes, every request fails)."""

    posts = 0

    def do_GET(self) -> None:
        body = json.dumps(
            {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "t"}]}
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_POST(self) -> None:
        type(self).posts += 1
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hang_up() -> Iterator[str]:
    _HangUp.posts = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HangUp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _requests_bound(pairs: int) -> int:
    """Requests of ``pairs`` pairs: 2 segments x 2 orders x the attempts each."""
    return pairs * 2 * 2 * ATTEMPTS


def test_a_closed_endpoint_is_one_line_before_any_work(manifest, tmp_path):
    out = tmp_path / "o.jsonl"
    url = f"http://127.0.0.1:{closed_port()}/v1"
    proc = cli(
        str(manifest), "--out", str(out), "--judge", "openai", "--model", "m", "--base-url", url, "--quiet"
    )
    one_line_error(proc, "endpoint unreachable", f"--base-url {url}")
    assert not out.exists()


def test_a_missing_key_names_the_variable(manifest, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    out = tmp_path / "o.jsonl"
    proc = cli(
        str(manifest), "--out", str(out), "--judge", "openai", "--model", "gpt-4o-mini", "--quiet", env=env
    )
    one_line_error(proc, "OPENAI_API_KEY")
    assert "api_key" not in proc.stderr and not out.exists()


def test_a_refused_key_names_the_variable(manifest, tmp_path):
    out = tmp_path / "o.jsonl"
    with StandinServer(policy="hash") as server:
        server.control(api_key="the-right-key")
        proc = cli(
            str(manifest), "--out", str(out), "--judge", "openai", "--model", "m", "--base-url", server.base_url,
            "--quiet", env={"OPENAI_API_KEY": "a-wrong-key"},
        )  # fmt: skip
        assert server.stats()["answered"] == 0
    one_line_error(proc, "refused the API key (HTTP 401)", "OPENAI_API_KEY")


def test_a_backend_that_hangs_up_stops_the_run_with_exit_3(manifest, tmp_path, hang_up):
    out = tmp_path / "o.jsonl"
    proc = cli(
        str(manifest), "--out", str(out), "--judge", "openai", "--model", "m", "--base-url", hang_up,
        "--max-attempts", str(ATTEMPTS), "--concurrency", str(2 * WORKERS), "--no-cache", "--quiet",
        env={"OPENAI_API_KEY": "k"},
    )  # fmt: skip
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "endpoint unreachable" in proc.stdout
    # at most the streak plus the pairs already in flight were tried, never all twelve
    assert _HangUp.posts <= _requests_bound(UNREACHABLE_STREAK_LIMIT + WORKERS - 1) < _requests_bound(PAIRS)
    assert not out.exists() or read_records(out) == []


def test_the_circuit_breaker_on_a_closed_port_in_process(manifest, tmp_path):
    """The runner alone (no preflight): a closed port stops 12 pairs after the streak."""
    judge = OpenAIJudge("m", base_url=f"http://127.0.0.1:{closed_port()}/v1", api_key="k")
    config = EngineConfig(
        max_attempts=ATTEMPTS, backoff_initial=0.01, backoff_max=0.05, concurrency=2 * WORKERS
    )
    engine = Engine(judge, config)

    async def run():
        try:
            return await run_batch(manifest, tmp_path / "o.jsonl", engine, workers=WORKERS, progress=False)
        finally:
            await engine.aclose()

    result = asyncio.run(run())
    assert result.stopped is not None and result.stopped.startswith("endpoint unreachable")
    assert (
        result.ok == 0 and UNREACHABLE_STREAK_LIMIT <= result.failed <= UNREACHABLE_STREAK_LIMIT + WORKERS - 1
    )
    assert engine.stats.requests <= _requests_bound(result.failed) < _requests_bound(PAIRS)
