"""The service on the wire, as a real uvicorn process (issue #15 items 13, 14, 15, 16, 17, 18, 25):
slow and oversized clients over raw sockets, clients that leave, SIGTERM past the grace period,
and what the logs keep."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from labeler.media import video
from labeler.standin import StandinServer
from tests.conftest import textured_frames
from tests.service_helpers import ServiceProcess, metric_value, running_service

TOKEN = "wire-test-token"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    for name, seed in (("a.mp4", 1), ("b.mp4", 2), ("c.mp4", 3)):
        video.write_video(root / name, textured_frames(16, h=64, w=96, seed=seed), 8.0, crf=20)
    (root / "m.jsonl").write_text(
        json.dumps({"pair_id": "p", "prompt": "x", "video_a": "a.mp4", "video_b": "b.mp4"}) + "\n"
    )
    return root


def connect(svc: ServiceProcess) -> socket.socket:
    host, port = svc.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def fast(media: Path) -> Iterator[ServiceProcess]:
    args = ["--media-root", str(media), "--judge", "metrics", "--no-cache", "--max-body-bytes", "1000000"]
    args += ["--header-timeout-seconds", "1", "--body-timeout-seconds", "2"]
    with running_service(args) as svc:
        yield svc


# ------------------------------------------------------------------ items 14, 16


def test_slow_headers_are_cut_off(fast: ServiceProcess) -> None:
    sock = connect(fast)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
    started = time.monotonic()
    assert read_all(sock) == b""  # closed by the server, no answer
    assert time.monotonic() - started < 20
    sock.close()


def test_uvicorn_cli_users_get_the_header_deadline_too(media: Path) -> None:
    command = [sys.executable, "-m", "uvicorn", "--factory", "labeler.app:create_app", "--host", "127.0.0.1"]
    command += ["--http", "labeler.service.http_protocol:HeaderDeadlineProtocol"]
    env = {"DENSEPREF_ENGINE_ARGS": "--judge metrics --no-cache", "DENSEPREF_HEADER_TIMEOUT_SECONDS": "1"}
    with running_service(["--port", "0"], command=command, env=env) as svc:
        sock = connect(svc)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert read_all(sock) == b""
        sock.close()


def test_a_slow_body_gets_408_and_the_connection_closes(fast: ServiceProcess) -> None:
    sock = connect(fast)
    sock.sendall(
        b"POST /label HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    answer = read_all(sock)  # the body never completes
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
    assert json.loads(body)["error"]["type"] == "RequestTimeout"


def test_a_chunked_upload_past_the_limit_is_refused_and_not_read(fast: ServiceProcess) -> None:
    sock = connect(fast)
    sock.sendall(
        b"POST /label HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    sent = 0
    try:
        while sent < 512 * 2**20:
            sock.sendall(chunk)
            sent += 65536
    except OSError:  # the server closed the connection: it stopped reading
        pass
    answer = read_all(sock) if sent < 512 * 2**20 else b""
    sock.close()
    assert sent < 64 * 2**20, f"the server read {sent} bytes past a 1 MB limit"
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


# ------------------------------------------------------------------ item 13


def test_healthz_answers_while_a_huge_body_is_parsed(media: Path) -> None:
    # The body: 30 MB of invalid segments. json.loads holds the GIL for seconds on it.
    big = json.dumps({"prompt": "p", "segments": [{"frames_a": [1], "x": 2}] * 1_000_000}).encode()
    args = [
        "--media-root",
        str(media),
        "--judge",
        "metrics",
        "--no-cache",
        "--max-body-bytes",
        str(64 * 2**20),
    ]
    with running_service(args) as svc, httpx.Client(base_url=svc.base_url, timeout=60) as client:
        result: dict = {}
        posting = threading.Thread(
            target=lambda: result.setdefault(
                "r", client.post("/label", content=big, headers={"content-type": "application/json"})
            )
        )
        posting.start()
        worst = 0.0
        while posting.is_alive():
            started = time.monotonic()
            assert httpx.get(svc.base_url + "/healthz", timeout=10).status_code == 200
            worst = max(worst, time.monotonic() - started)
        posting.join()
    assert result["r"].status_code == 400 and len(result["r"].content) < 1000
    assert result["r"].json()["error"]["type"] == "TooManySegments"
    assert worst < 1.0


# ------------------------------------------------------------------ items 15, 25


def by_path(pair_id: str = "p1") -> dict:
    return {"prompt": "x", "video_a": "a.mp4", "video_b": "b.mp4", "pair_id": pair_id}


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_client_that_leaves_cancels_its_job_and_frees_its_slot(media: Path) -> None:
    with StandinServer(latency_ms=60_000) as standin:
        args = ["--media-root", str(media), "--base-url", standin.base_url, "--no-cache", "--max-queue", "1"]
        args += ["--judge", "openai", "--model", "m", "--frames-per-segment", "1", "--no-swap"]
        with running_service(args) as svc, svc.client() as client:
            sock = connect(svc)
            body = json.dumps(by_path()).encode()
            sock.sendall(b"POST /label HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            sock.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: standin.stats()["in_flight"] > 0)
            assert metric_value(client.get("/metrics").text, "densepref_in_flight") == 1
            sock.close()  # the client leaves long before the judge would answer
            wait_for(lambda: metric_value(client.get("/metrics").text, "densepref_in_flight") == 0, 10)
            assert "the client disconnected" in svc.log()


def test_sigterm_past_the_grace_period_answers_503_and_ends_streams(media: Path) -> None:
    with StandinServer(latency_ms=60_000) as standin:
        args = ["--media-root", str(media), "--base-url", standin.base_url, "--no-cache"]
        args += [
            "--judge",
            "openai",
            "--model",
            "m",
            "--frames-per-segment",
            "1",
            "--shutdown-grace-seconds",
            "3",
        ]
        with running_service(args) as svc:
            results: dict = {}

            def single() -> None:
                with svc.client() as client:
                    results["label"] = client.post("/label", json=by_path("solo"))

            def batch() -> None:
                with svc.client() as client:
                    pairs = [by_path("b1"), {**by_path("b2"), "video_b": "c.mp4"}]
                    results["batch"] = client.post("/label/batch", json={"pairs": pairs})

            threads = [threading.Thread(target=single), threading.Thread(target=batch)]
            for t in threads:
                t.start()
            wait_for(lambda: standin.stats()["in_flight"] >= 3)
            svc.proc.send_signal(signal.SIGTERM)
            for t in threads:
                t.join(60)
            assert svc.proc.wait(60) in (0, -signal.SIGTERM)
    label = results["label"]
    assert label.status_code == 503 and label.json()["error"]["type"] == "ShuttingDown", label.text
    lines = [json.loads(line) for line in results["batch"].text.splitlines()]
    assert sorted(line["pair_id"] for line in lines) == ["b1", "b2"]
    assert all(line["status"] == 503 and line["error"]["type"] == "ShuttingDown" for line in lines)


# ------------------------------------------------------------------ items 17, 18


def test_the_page_token_is_exchanged_and_never_logged(media: Path) -> None:
    with running_service(
        ["--media-root", str(media), "--judge", "metrics", "--no-cache"], token=TOKEN
    ) as svc:
        with httpx.Client(base_url=svc.base_url, timeout=30) as browser:
            first = browser.get(f"/annotate?manifest=m.jsonl&token={TOKEN}", follow_redirects=False)
            assert first.status_code == 303 and TOKEN not in first.headers["location"]
            page = browser.get(first.headers["location"])
            assert page.status_code == 200
            api = browser.get("/annotate/api/pairs", params={"manifest": "m.jsonl", "annotator": "a"})
            assert api.status_code == 200
            video_url = api.json()["pairs"][0]["videos"]["A"]
            assert browser.get(video_url).status_code == 200
        log = svc.log()
    assert "/annotate?manifest=m.jsonl" in log and "token=[redacted]" in log
    assert TOKEN not in log and "sig=[redacted]" in log


def test_no_token_is_logged_loudly(media: Path) -> None:
    with running_service(["--judge", "metrics", "--no-cache"]) as svc:
        assert "AUTH IS OFF" in svc.log()
