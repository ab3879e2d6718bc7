"""A client that leaves in the middle of its body (#24) is its own failure: a 499 in the metrics and
one log line, never a 500 with a traceback."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from labeler.media import video
from tests.conftest import textured_frames
from tests.service_helpers import running_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    video.write_video(root / "a.mp4", textured_frames(16, seed=1), 8.0, crf=20)
    return root


def test_a_client_leaving_mid_body_is_a_499_not_a_500(media: Path) -> None:
    with running_service(["--media-root", str(media), "--judge", "metrics", "--no-cache"]) as svc:
        host, port = svc.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"POST /label HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            sock.sendall(b'Content-Length: 100000\r\n\r\n{"prompt": "x", ')  # then it leaves
        with svc.client() as client:
            deadline = time.monotonic() + 60
            while 'status="499"' not in (metrics := client.get("/metrics").text):
                assert time.monotonic() < deadline, metrics
                time.sleep(0.2)
            assert 'status="500"' not in metrics
        assert "Traceback" not in svc.log()
