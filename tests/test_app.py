"""The HTTP service as a real process (``python -m labeler.app`` under uvicorn), spoken to over
loopback HTTP: both request forms give the engine's own records (same cache, same votes, same
probabilities), batches stream NDJSON, ops endpoints answer, the openai judge works against the
local stand-in server, judge failures are 502s, and SIGTERM lets in-flight requests finish."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import diskcache
import numpy as np
import pytest
from PIL import Image, ImageFilter

from labeler.engine import Engine, EngineConfig, FrameSegment
from labeler.judges import build_judge
from labeler.media import video
from labeler.schemas import DensePreferenceRecord, Judgment, ManifestEntry
from labeler.service.settings import ServiceSettings
from labeler.standin import StandinServer
from tests.conftest import textured_frames
from tests.service_helpers import REPO_ROOT, inline_body, metric_value, running_service, service_env

#: Minutes, not seconds (real processes, demo sets or whole benchmarks): left out of `-m "not slow"`.
pytestmark = pytest.mark.slow

FPS = 8.0


def blurred(frames: np.ndarray, radius: float = 2.0) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(radius))) for f in frames])


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    sharp = textured_frames(16, h=64, w=96, seed=3)
    return {"sharp": sharp, "blurred": blurred(sharp)}


@pytest.fixture(scope="module")
def media(tmp_path_factory, clips) -> Path:
    """Two-second clips at 8 fps: a sharp one, its blurred copy, and an unrelated third."""
    root = tmp_path_factory.mktemp("media")
    video.write_video(root / "sharp.mp4", clips["sharp"], FPS, crf=8)
    video.write_video(root / "clips" / "blurred.mp4", clips["blurred"], FPS, crf=8)
    video.write_video(root / "other.mp4", textured_frames(16, h=64, w=96, seed=9), FPS, crf=8)
    return root


@pytest.fixture(scope="module")
def service(media, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with running_service(
        ["--media-root", str(media), "--cache-dir", str(cache), "--judge", "metrics"]
    ) as svc:
        yield svc


def by_path(a: str = "sharp.mp4", b: str = "clips/blurred.mp4", **extra) -> dict:
    return {"prompt": "a textured wall", "video_a": a, "video_b": b, **extra}


def test_by_path_gives_the_engines_record(service, media):
    with service.client() as client:
        response = client.post("/label", json=by_path(pair_id="p1"))
    assert response.status_code == 200, response.text
    record = DensePreferenceRecord.model_validate(response.json())
    # The same engine in-process, on the same files, answers identically (labels and probabilities).
    entry = ManifestEntry(
        pair_id="p1",
        prompt="a textured wall",
        video_a=str(media / "sharp.mp4"),
        video_b=str(media / "clips/blurred.mp4"),
    )
    expected = asyncio.run(Engine(build_judge("metrics"), EngineConfig()).label_pair(entry))
    assert [(s.label, s.p_a, s.p_b, s.p_tie) for s in record.segments] == [
        (s.label, s.p_a, s.p_b, s.p_tie) for s in expected.segments
    ]
    assert record.video_label == expected.video_label and record.video_score == expected.video_score
    assert [v.order for v in record.segments[0].votes] == ["ab", "ba"]
    # Caller's relative paths come back; the server's absolute paths stay private.
    assert (record.video_a, record.video_b, record.pair_id) == ("sharp.mp4", "clips/blurred.mp4", "p1")
    assert str(media) not in response.text


def test_repeat_is_answered_from_the_shared_cache(service):
    body = by_path("other.mp4", "sharp.mp4", prompt="cache me")
    with service.client() as client:
        first = client.post("/label", json=body).json()
        before = metric_value(client.get("/metrics").text, "densepref_cache_hits_total")
        second = client.post("/label", json=body).json()
        after = metric_value(client.get("/metrics").text, "densepref_cache_hits_total")
    n = len(first["segments"])
    assert first["usage"]["requests"] == 2 * n and first["usage"]["cache_hits"] == 0
    assert second["usage"]["requests"] == 0 and second["usage"]["cache_hits"] == 2 * n
    assert second["segments"] == first["segments"]
    assert after - before == 2 * n


def test_inline_frames_give_the_engines_record(service, clips):
    sharp, soft = clips["sharp"], clips["blurred"]
    body = inline_body(sharp, soft, per_segment=8)
    with service.client() as client:
        response = client.post("/label", json=body)
    assert response.status_code == 200, response.text
    record = DensePreferenceRecord.model_validate(response.json())
    segments = [FrameSegment(sharp[i : i + 8], soft[i : i + 8], i / 8, i / 8 + 1) for i in (0, 8)]
    expected = asyncio.run(
        Engine(build_judge("metrics"), EngineConfig()).label_frames(body["prompt"], segments)
    )
    assert [(s.label, s.p_a, s.p_b) for s in record.segments] == [
        (s.label, s.p_a, s.p_b) for s in expected.segments
    ]
    assert record.video_label == expected.video_label and record.num_frames == 16
    assert (record.video_a, record.video_b) == ("<inline>", "<inline>")


def test_batch_streams_one_line_per_pair_and_isolates_failures(service):
    pairs = [
        by_path(pair_id="good-1"),
        by_path("other.mp4", "sharp.mp4", pair_id="good-2"),
        by_path("sharp.mp4", "missing.mp4", pair_id="bad"),
    ]
    with service.client() as client, client.stream("POST", "/label/batch", json={"pairs": pairs}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    by_id = {line["pair_id"]: line for line in lines}
    assert sorted(by_id) == ["bad", "good-1", "good-2"]
    assert by_id["bad"]["error"]["type"] == "MediaNotFound" and by_id["bad"]["status"] == 404
    assert "video_b" in by_id["bad"]["error"]["message"]
    for pid in ("good-1", "good-2"):
        assert DensePreferenceRecord.model_validate(by_id[pid]).pair_id == pid


def test_ops_endpoints(service):
    with service.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["judge"] == "metrics"
        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        for name in (
            "densepref_requests_total",
            "densepref_request_seconds_bucket",
            "densepref_cache_hits_total",
            "densepref_judge_errors_total",
            "densepref_in_flight",
        ):
            assert name in metrics.text
        assert 'endpoint="/healthz",status="200"' in metrics.text
        assert "swagger-ui" in client.get("/docs").text
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/label", "/label/batch", "/healthz", "/readyz", "/metrics"} <= set(paths)


def test_openai_judge_against_the_standin(media, tmp_path):
    with StandinServer() as standin:
        args = ["--media-root", str(media), "--base-url", standin.base_url]
        args += [
            "--judge",
            "openai",
            "--model",
            "standin-vlm",
            "--no-cache",
            "--max-attempts",
            "2",
            "--frames-per-segment",
            "4",
        ]
        with running_service(args) as svc, svc.client() as client:
            assert client.get("/readyz").json()["status"] == "ready"
            response = client.post("/label", json=by_path())
            assert response.status_code == 200, response.text
            record = DensePreferenceRecord.model_validate(response.json())
            assert (record.labeler.judge, record.labeler.model) == ("openai", "standin-vlm")
            assert standin.stats()["answered"] == 2 * len(record.segments)
            # The endpoint fails every request for this prompt: after the retries, 502 with its reason.
            standin.control(rules=[{"match": "doomed", "status": 500}])
            failed = client.post("/label", json=by_path(prompt="a doomed clip"))
            assert failed.status_code == 502, failed.text
            assert failed.json()["error"]["type"] == "TransientJudgeError"
            assert "500" in failed.json()["error"]["message"]
            # ... and the service stays up and keeps labeling.
            assert client.get("/healthz").status_code == 200
            assert client.post("/label", json=by_path(prompt="a fine clip")).status_code == 200
            assert metric_value(client.get("/metrics").text, "densepref_judge_errors_total") >= 1


def test_readyz_reports_an_unreachable_judge(media):
    args = ["--judge", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--no-cache"]
    with running_service(args) as svc, svc.client() as client:
        response = client.get("/readyz")
        assert response.status_code == 503 and response.json()["status"] == "not ready"
        assert client.get("/healthz").status_code == 200


def test_sigterm_lets_in_flight_requests_finish(media, tmp_path):
    cache_dir = tmp_path / "cache"
    with StandinServer(latency_ms=1500) as standin:
        args = ["--media-root", str(media), "--base-url", standin.base_url, "--cache-dir", str(cache_dir)]
        args += ["--judge", "openai", "--model", "m", "--frames-per-segment", "2"]
        with running_service(args) as svc:
            result: dict = {}

            def call() -> None:
                with svc.client() as client:
                    result["response"] = client.post("/label", json=by_path())

            thread = threading.Thread(target=call)
            thread.start()
            deadline = time.monotonic() + 20
            while standin.stats()["in_flight"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert standin.stats()["in_flight"] > 0, "the judge was never called"
            svc.proc.send_signal(signal.SIGTERM)  # mid-request: the judge is still thinking
            thread.join(60)
            assert svc.proc.wait(60) in (0, -signal.SIGTERM)
            log = svc.log()
    response = result["response"]
    assert response.status_code == 200, response.text
    record = DensePreferenceRecord.model_validate(response.json())
    assert "Application shutdown complete" in log
    # Every judgment the service made is in the cache, whole (one committed transaction each);
    # the other entries are the engine's probe facts, valid JSON too.
    with diskcache.Cache(str(cache_dir)) as cache:
        values = [json.loads(cache[key]) for key in cache.iterkeys()]
    judgments = [v for v in values if "label" in v]
    assert len(judgments) == 2 * len(record.segments)
    for value in judgments:
        Judgment.model_validate(value)


def test_uvicorn_factory_takes_settings_from_the_environment(media):
    command = [sys.executable, "-m", "uvicorn", "--factory", "labeler.app:create_app", "--host", "127.0.0.1"]
    env = {"DENSEPREF_MEDIA_ROOT": str(media), "DENSEPREF_ENGINE_ARGS": "--no-cache --frames-per-segment 2"}
    with running_service(["--port", "0"], command=command, env=env, token="tok") as svc:
        with svc.client(token="") as anonymous:
            assert anonymous.post("/label", json=by_path()).status_code == 401
        with svc.client() as client:
            response = client.post("/label", json=by_path())
    assert response.status_code == 200, response.text
    assert response.json()["labeler"]["frames_per_segment"] == 2


def test_cli_help_and_bad_options():
    env = service_env()
    done = subprocess.run(
        [sys.executable, "-m", "labeler.app", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert done.returncode == 0
    for option in (
        "--media-root",
        "--max-body-bytes",
        "--max-queue",
        "--judge",
        "--base-url",
        "DENSEPREF_API_TOKEN",
    ):
        assert option in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "labeler.app", "--media-root", "/nonexistent/dir"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert bad.returncode != 0 and "is not a folder" in bad.stderr


def test_settings_from_environment():
    settings = ServiceSettings.from_env(
        {"DENSEPREF_MAX_QUEUE": "3", "DENSEPREF_ENGINE_ARGS": "--judge metrics --no-cache"}
    )
    assert settings.max_queue == 3 and settings.engine_args == ["--judge", "metrics", "--no-cache"]
    assert ServiceSettings.from_env({"DENSEPREF_MAX_QUEUE": "3"}, max_queue=5).max_queue == 5  # explicit wins
    with pytest.raises(ValueError, match="DENSEPREF_MAX_BODY_BYTES"):
        ServiceSettings.from_env({"DENSEPREF_MAX_BODY_BYTES": "lots"})
    assert "secret" not in repr(ServiceSettings(api_token="secret"))
