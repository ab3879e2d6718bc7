"""Hostile input to the service, in process (issue #15: items 7, 12, 13, 18, 19, 20, 21, 23)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from labeler.media import video
from labeler.service.app import create_app
from labeler.service.errors import MAX_REPORTED_ERRORS
from labeler.service.media_stream import usable_range
from labeler.service.settings import ServiceSettings
from tests.conftest import textured_frames
from tests.service_helpers import REPO_ROOT, b64_image, service_env

METRICS = ["--judge", "metrics", "--no-cache"]


def make_client(root: Path | None = None, **limits: object) -> TestClient:
    return TestClient(create_app(ServiceSettings(media_root=root, engine_args=METRICS, **limits)))


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    real = tmp_path_factory.mktemp("real-media")
    video.write_video(real / "a.mp4", textured_frames(16, h=64, w=96, seed=1), 8.0, crf=20)
    video.write_video(real / "b.mp4", textured_frames(16, h=64, w=96, seed=2), 8.0, crf=20)
    (real / "text.mp4").write_text("not a video at all")
    (real / "sub").mkdir()
    (real / "sub" / "alias.mp4").symlink_to(real / "text.mp4")
    link = real.parent / (real.name + "-link")
    link.symlink_to(real)  # the media root as the operator names it: a symlink
    return link


def inline(frames_a: list[np.ndarray], frames_b: list[np.ndarray], **extra: object) -> dict:
    segment = {
        "frames_a": [b64_image(f) for f in frames_a],
        "frames_b": [b64_image(f) for f in frames_b],
        "start_s": 0.0,
        "end_s": 1.0,
    }
    return {"prompt": "p", "segments": [segment], **extra}


def error(response, status: int, error_type: str | None = None) -> str:
    assert response.status_code == status, response.text
    if error_type is not None:
        assert response.json()["error"]["type"] == error_type, response.text
    return response.json()["error"]["message"]


# ------------------------------------------------------------------ item 7, 19


def test_frames_too_small_for_the_judge_are_bad_input_not_a_judge_failure() -> None:
    tiny = list(textured_frames(2, h=8, w=8, seed=0))
    with make_client() as client:
        message = error(client.post("/label", json=inline(tiny, tiny)), 400)
    assert "too small" in message


def test_error_messages_show_paths_as_the_client_gave_them(media: Path) -> None:
    real = str(media.resolve())
    with make_client(media) as client:
        for given in ("text.mp4", "sub/alias.mp4"):
            body = {"prompt": "p", "video_a": given, "video_b": "b.mp4"}
            message = error(client.post("/label", json=body), 400, "InvalidVideo")
            assert str(media) not in message and real not in message and "/tmp" not in message, message
        batch = client.post(
            "/label/batch", json={"pairs": [{"prompt": "p", "video_a": "sub/alias.mp4", "video_b": "a.mp4"}]}
        )
        [line] = [json.loads(x) for x in batch.text.splitlines()]
        assert line["status"] == 400 and real not in line["error"]["message"]


# ------------------------------------------------------------------ item 13, 23


def test_huge_bodies_are_counted_before_validation_and_errors_are_capped() -> None:
    with make_client(max_body_bytes=64 * 2**20) as client:
        bad = {"prompt": "p", "segments": [{"frames_a": 1}] * 500_000}
        response = client.post(
            "/label", content=json.dumps(bad), headers={"content-type": "application/json"}
        )
        assert "500000 over the limit" in error(response, 400, "TooManySegments")
        assert len(response.content) < 1000
        pairs = {"pairs": [{"prompt": "p", "video_a": "a", "video_b": "b"}] * 700_000}
        response = client.post(
            "/label/batch", content=json.dumps(pairs), headers={"content-type": "application/json"}
        )
    assert response.status_code in (400,), response.text
    with make_client(max_segments=1000) as client:
        response = client.post("/label", json={"prompt": "p", "segments": [{"frames_a": 1}] * 900})
    message = error(response, 422, "ValidationError")
    assert message.count("body.") == MAX_REPORTED_ERRORS and "more problems" in message
    assert len(response.content) < 20_000


def test_malformed_bodies_get_422_naming_the_problem() -> None:
    with make_client() as client:
        deep = client.post(
            "/label", content=b"[" * 1000 + b"]" * 1000, headers={"content-type": "application/json"}
        )
        assert "nested deeper" in error(deep, 422, "ValidationError")
        latin = client.post(
            "/label",
            content='{"prompt": "caf\u00e9"}'.encode("latin-1"),
            headers={"content-type": "application/json"},
        )
        assert "not UTF-8" in error(latin, 422, "ValidationError")
        broken = client.post("/label", content=b'{"prompt": ', headers={"content-type": "application/json"})
        assert "invalid JSON" in error(broken, 422, "ValidationError")
        typed = client.post("/label", json={"prompt": 5, "video_a": "a", "video_b": "b"})
        assert "body.path.prompt" in error(typed, 422, "ValidationError")
        long_id = client.post(
            "/label", json={"prompt": "p", "video_a": "a", "video_b": "b", "pair_id": "x" * 600}
        )
        assert "at most 512 characters" in error(long_id, 422, "ValidationError")
        garbage = inline([], [])
        garbage["segments"][0]["frames_a"] = [b64_image(np.zeros((20, 20, 3), np.uint8))[:40] + "AAAA"]
        garbage["segments"][0]["frames_b"] = garbage["segments"][0]["frames_a"]
        message = error(client.post("/label", json=garbage), 400)
        assert "object at 0x" not in message


@pytest.mark.parametrize("field,value", [("segment", "1"), ("segment", True), ("blind", "yes")])
def test_annotation_fields_take_strict_types(tmp_path: Path, field: str, value: object) -> None:
    body = {"manifest": "m.jsonl", "pair_id": "p", "segment": 0, "label": "A", "annotator": "a", field: value}
    with make_client(tmp_path) as client:
        assert field in error(client.post("/annotations", json=body), 422)


def test_ranges_follow_rfc_9110(media: Path) -> None:
    assert usable_range("bytes=0-5,-0", 100) == "bytes=0-5"
    assert usable_range("bytes=100-50", 1000) is None
    assert usable_range("bytes=500-", 100) == "bytes=500-"  # nothing satisfiable: 416
    assert usable_range("items=0-5", 100) is None
    data = (media / "a.mp4").read_bytes()
    with make_client(media) as client:
        part = client.get("/media/a.mp4", headers={"Range": "bytes=0-5,-0"})
        assert part.status_code == 206 and part.content == data[:6]
        whole = client.get("/media/a.mp4", headers={"Range": "bytes=100-50"})
        assert whole.status_code == 200 and whole.content == data
        past = client.get("/media/a.mp4", headers={"Range": f"bytes={len(data) + 10}-"})
        assert past.status_code == 416 and past.json()["error"]["type"] == "RangeNotSatisfiable"


# ------------------------------------------------------------------ item 12


def test_inline_pixels_are_counted_across_admitted_jobs() -> None:
    frames = list(textured_frames(2, h=64, w=64, seed=0))
    body = inline(frames, frames)
    with make_client(max_inflight_pixels=4 * 64 * 64 + 100) as client:
        pixels = client.app.state.service.pixels
        with pixels.hold(200):  # another admitted job holds part of the budget
            busy = client.post("/label", json=body)
            assert "decoded pixels" in error(busy, 503, "Overloaded")
            assert busy.headers["retry-after"]
        assert client.post("/label", json=body).status_code == 200
        assert pixels.held == 0


# ------------------------------------------------------------------ items 18, 20, 21


@pytest.mark.parametrize("token", ["", "   ", " padded "])
def test_empty_or_blank_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match="API_TOKEN"):
        ServiceSettings.from_env({"DENSEPREF_API_TOKEN": token})
    with pytest.raises(ValueError):
        ServiceSettings(api_token=token)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--judge", "openai"], "needs --model"),
        (["--segment-seconds", "nan"], "--segment-seconds"),
        (["--timeout", "inf"], "--timeout"),
    ],
)
def test_app_usage_errors_exit_2_with_one_line(args: list[str], expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "labeler.app", "--no-cache", *args],
        capture_output=True,
        text=True,
        env=service_env(),
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr


def test_an_empty_token_in_the_environment_stops_the_app() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "labeler.app", "--no-cache"],
        capture_output=True,
        text=True,
        env=service_env({"DENSEPREF_API_TOKEN": ""}),
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert done.returncode == 2 and "API_TOKEN" in done.stderr and "Traceback" not in done.stderr


def test_by_path_jobs_count_their_decoded_pixels_too(media: Path) -> None:
    body = {"prompt": "p", "video_a": "a.mp4", "video_b": "b.mp4"}
    one_job = 2 * 8 * 2 * 96 * 64  # 2 segments of 8 frames, A and B, 96x64 (under --max-side)
    with make_client(media, max_inflight_pixels=one_job - 1) as client:
        assert "over the limit" in error(client.post("/label", json=body), 400, "TooManyPixels")
    with make_client(media, max_inflight_pixels=one_job) as client:
        with client.app.state.service.pixels.hold(1):
            error(client.post("/label", json=body), 503, "Overloaded")
        assert client.post("/label", json=body).status_code == 200


def test_the_readme_tables_name_every_limit_and_error_type() -> None:
    from labeler.service.errors import ERROR_TABLE

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for name in ServiceSettings().limits():
        assert f"`--{name.replace('_', '-')}`" in readme, name
    for rule in ERROR_TABLE:
        assert rule.error_type is None or f"`{rule.error_type}`" in readme, rule
