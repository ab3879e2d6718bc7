"""Safety and limits of the HTTP service, each one tested: auth, media paths, body size, segment /
frame / pixel / duration / batch limits, malformed input, overload, judge failures. Every refusal
comes in the one error shape ``{"error": {"type", "message"}}`` and none is a 500."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from labeler.engine import Engine, EngineConfig
from labeler.media import video
from labeler.service.app import create_app
from labeler.service.settings import ServiceSettings
from tests.fake_judges import BrightnessJudge, ScriptedFailures, frames_with_level
from tests.service_helpers import b64_image, metric_value, running_service

FPS = 8.0
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    video.write_video(root / "a.mp4", frames_with_level(16, 120), FPS, crf=8)  # 2 s
    video.write_video(root / "sub" / "b.mp4", frames_with_level(16, 90), FPS, crf=8)
    video.write_video(root / "short.mp4", frames_with_level(8, 90), FPS, crf=8)
    (root / "notes.mp4").write_text("not a video at all")
    (root / "empty.mp4").write_bytes(b"")
    (root / "folder.mp4").mkdir()
    outside = tmp_path_factory.mktemp("outside")
    video.write_video(outside / "secret.mp4", frames_with_level(16, 10), FPS, crf=8)
    (root / "escape.mp4").symlink_to(outside / "secret.mp4")
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)
    (root / "inside_link.mp4").symlink_to(root / "a.mp4")
    return root


def make_client(media: Path | None, judge=None, config: EngineConfig | None = None, **limits) -> TestClient:
    settings = ServiceSettings(media_root=media, api_token=limits.pop("api_token", None), **limits)
    engine = Engine(judge or BrightnessJudge(), config or EngineConfig(frames_per_segment=2))
    return TestClient(create_app(settings, engine=engine))


@pytest.fixture(scope="module")
def client(media):
    with make_client(media) as c:
        yield c


def pair(a: str = "a.mp4", b: str = "sub/b.mp4", **extra) -> dict:
    return {"prompt": "gray", "video_a": a, "video_b": b, **extra}


def frame(value: int = 100, h: int = 16, w: int = 24) -> str:
    return b64_image(np.full((h, w, 3), value, np.uint8))


def inline(n_segments: int = 1, n_frames: int = 2, **size) -> dict:
    """An inline body: A brighter than B in every segment, one second each."""

    def segment(k: int) -> dict:
        a, b = [frame(150, **size)] * n_frames, [frame(90, **size)] * n_frames
        return {"frames_a": a, "frames_b": b, "start_s": float(k), "end_s": float(k + 1)}

    return {"prompt": "gray", "segments": [segment(k) for k in range(n_segments)]}


def assert_error(response: httpx.Response, status: int, error_type: str, *mentions: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == error_type, body
    for text in mentions:
        assert text in body["error"]["message"], body
    return body


# --------------------------------------------------------------------------- auth


def test_auth_guards_every_endpoint_but_healthz(media):
    with make_client(media, api_token=TOKEN) as c:
        assert c.get("/healthz").status_code == 200
        guarded = [
            ("GET", "/readyz"),
            ("GET", "/metrics"),
            ("GET", "/docs"),
            ("GET", "/openapi.json"),
            ("POST", "/label"),
            ("POST", "/label/batch"),
        ]
        for method, path in guarded:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Basic {TOKEN}"},
                {"Authorization": "Bearer"},
            ):
                r = c.request(method, path, headers=headers, json=pair())
                assert_error(r, 401, "Unauthorized")
                assert r.headers["www-authenticate"] == "Bearer"
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/readyz", headers=ok).status_code == 200
        assert c.post("/label", json=pair(), headers=ok).status_code == 200


def test_token_compare_is_constant_time(media, monkeypatch):
    import labeler.service.auth as auth

    seen = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: seen.append((a, b)) or real(a, b))
    with make_client(media, api_token=TOKEN) as c:
        assert c.get("/readyz", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert seen == [(b"guess", TOKEN.encode())]


def test_auth_from_environment_on_the_real_process(media):
    with running_service(["--media-root", str(media), "--no-cache"], token=TOKEN) as svc:
        with svc.client(token="") as anonymous:
            assert anonymous.get("/healthz").status_code == 200
            assert_error(anonymous.post("/label", json=pair()), 401, "Unauthorized")
        with svc.client() as authorized:
            assert authorized.get("/metrics").status_code == 200


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("path", "status", "error_type"),
    [
        ("/etc/passwd", 400, "InvalidPath"),
        ("../outside/secret.mp4", 400, "InvalidPath"),
        ("sub/../../x.mp4", 400, "InvalidPath"),
        ("http://169.254.169.254/latest/meta-data", 400, "InvalidPath"),
        ("file:///etc/passwd", 400, "InvalidPath"),
        ("//evil.example/a.mp4", 400, "InvalidPath"),
        ("data:video/mp4;base64,AAAA", 400, "InvalidPath"),
        ("a.mp4\x00.txt", 400, "InvalidPath"),
        ("   ", 400, "InvalidPath"),
        ("escape.mp4", 403, "PathOutsideMediaRoot"),
        ("escape_dir/secret.mp4", 403, "PathOutsideMediaRoot"),
        ("missing.mp4", 404, "MediaNotFound"),
        ("folder.mp4", 400, "NotARegularFile"),
        ("notes.mp4", 400, "InvalidVideo"),
        ("empty.mp4", 400, "InvalidVideo"),
    ],
)
def test_bad_paths_are_refused(client, path, status, error_type):
    assert_error(client.post("/label", json=pair(b=path)), status, error_type, "video_b")


def test_symlink_inside_the_root_is_fine(client):
    assert client.post("/label", json=pair(b="inside_link.mp4")).status_code == 200


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file_is_forbidden(media, client):
    target = media / "locked.mp4"
    target.write_bytes((media / "a.mp4").read_bytes())
    target.chmod(0)
    try:
        assert_error(client.post("/label", json=pair(b="locked.mp4")), 403, "MediaUnreadable")
    finally:
        target.chmod(0o644)


def test_path_form_needs_a_media_root():
    with make_client(None) as c:
        assert_error(c.post("/label", json=pair()), 400, "NoMediaRoot", "--media-root")
        assert_error(c.post("/label/batch", json={"pairs": [pair()]}), 400, "NoMediaRoot")


def test_mismatched_videos_and_server_paths_stay_private(client, media):
    body = assert_error(client.post("/label", json=pair(b="short.mp4")), 400, "VideoMismatch", "frames")
    assert str(media) not in body["error"]["message"]


# --------------------------------------------------------------------------- limits


def test_body_size_limit_with_content_length(media):
    with make_client(media, max_body_bytes=2000) as c:
        assert_error(c.post("/label", json=pair(prompt="x" * 3000)), 413, "PayloadTooLarge", "2000")
        assert c.post("/label", json=pair()).status_code == 200


def test_body_size_limit_while_streaming_on_the_real_process(media):
    def chunks():  # no Content-Length: sent chunked, counted as it arrives
        yield b'{"prompt": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'", "video_a": "a.mp4", "video_b": "sub/b.mp4"}'

    args = ["--media-root", str(media), "--no-cache", "--max-body-bytes", "4096"]
    with running_service(args) as svc, svc.client() as c:
        r = c.post("/label", content=chunks(), headers={"content-type": "application/json"})
        assert_error(r, 413, "PayloadTooLarge")
        assert c.get("/healthz").status_code == 200


def test_video_duration_limit(media):
    with make_client(media, max_video_seconds=1.5) as c:
        assert_error(c.post("/label", json=pair()), 400, "VideoTooLong", "video_a", "2.0 s")


def test_segment_limits(media):
    with make_client(media, max_segments=2) as c:
        assert_error(c.post("/label", json=pair(segment_seconds=0.25)), 400, "TooManySegments", "8 segments")
        assert_error(c.post("/label", json=inline(n_segments=3)), 400, "TooManySegments", "segments")
        assert c.post("/label", json=inline(n_segments=2)).status_code == 200


def test_frames_per_segment_limit(media):
    with make_client(media, max_frames_per_segment=2) as c:
        assert_error(c.post("/label", json=inline(n_frames=3)), 400, "TooManyFrames", "segments.0.frames_a")


def test_image_size_limits(media):
    with make_client(media, max_image_side=20) as c:
        assert_error(c.post("/label", json=inline()), 400, "ImageTooLarge", "segments.0.frames_a.0", "24x16")
    with make_client(media, max_image_pixels=300) as c:
        assert_error(c.post("/label", json=inline()), 400, "ImageTooLarge", "24x16", "300 pixels")
    with make_client(media, max_request_pixels=3 * 16 * 24) as c:  # 4 frames of 384 pixels
        assert_error(c.post("/label", json=inline()), 400, "TooManyPixels", "segments.0.frames_b.1")


def png_claiming(width: int, height: int) -> str:
    """A tiny real PNG whose header claims ``width x height`` (a decompression bomb's shape)."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return base64.b64encode(bytes(data)).decode()


@pytest.mark.parametrize("side", [5000, 40000])  # over our limit; over Pillow's own bomb limit too
def test_decompression_bombs_are_refused_before_decoding(client, monkeypatch, side):
    import labeler.media.images

    def never(*_a, **_k):
        raise AssertionError("decoded a bomb")

    monkeypatch.setattr(labeler.media.images, "decode_image", never)
    body = {
        "prompt": "p",
        "segments": [
            {"frames_a": [png_claiming(side, side)], "frames_b": [frame()], "start_s": 0, "end_s": 1}
        ],
    }
    assert_error(client.post("/label", json=body), 400, "ImageTooLarge", "segments.0.frames_a.0")


def test_batch_limit(media):
    with make_client(media, max_batch_pairs=2) as c:
        pairs = [pair(pair_id=f"p{i}") for i in range(3)]
        assert_error(c.post("/label/batch", json={"pairs": pairs}), 400, "TooManyPairs", "3")


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("content", "mention"),
    [
        (b'{"prompt": "x", "video_a": ', "invalid JSON"),
        (b"", "body"),
        (b"[1, 2]", "body"),
        (b'{"prompt": 3, "video_a": "a.mp4", "video_b": "sub/b.mp4"}', "prompt"),
        (b'{"prompt": "x", "video_a": "a.mp4", "video_b": "sub/b.mp4", "colour": 1}', "colour"),
        (b'{"prompt": "x", "video_a": "a.mp4"}', "video_b"),
        (
            b'{"prompt": "x", "video_a": "a.mp4", "video_b": "sub/b.mp4", "segment_seconds": -1}',
            "segment_seconds",
        ),
        (
            b'{"prompt": "x", "video_a": "a.mp4", "video_b": "sub/b.mp4", "segment_seconds": NaN}',
            "segment_seconds",
        ),
        (b'{"prompt": "\\ud800", "video_a": "a.mp4", "video_b": "sub/b.mp4"}', "prompt"),
        (b'{"prompt": "x", "segments": []}', "segments"),
        (
            b'{"prompt": "x", "segments": [{"frames_a": ["x"], "frames_b": ["x", "y"], "start_s": 0, "end_s": 1}]}',
            "frames_b",
        ),
        (
            b'{"prompt": "x", "segments": [{"frames_a": ["x"], "frames_b": ["x"], "start_s": 2, "end_s": 1}]}',
            "end_s",
        ),
        (b'{"pairs": "nope"}', "body"),
    ],
)
def test_malformed_requests_are_422_naming_the_field(client, content, mention):
    r = client.post("/label", content=content, headers={"content-type": "application/json"})
    assert_error(r, 422, "ValidationError", mention)


@pytest.mark.parametrize(
    ("frames_a", "frames_b", "error_type", "mention"),
    [
        (["%%% not base64 %%%"], None, "InvalidFrame", "segments.0.frames_a.0"),
        (
            [base64.b64encode(b"plain text, not an image").decode()],
            None,
            "InvalidImage",
            "segments.0.frames_a.0",
        ),
        (["data:image/png;base64," + frame()], [frame(h=20)], "FrameSizeMismatch", "segments.0"),
    ],
)
def test_bad_frames_are_400_naming_the_frame(client, frames_a, frames_b, error_type, mention):
    body = {
        "prompt": "p",
        "segments": [{"frames_a": frames_a, "frames_b": frames_b or [frame()], "start_s": 0, "end_s": 1}],
    }
    assert_error(client.post("/label", json=body), 400, error_type, mention)


def test_unknown_route_and_method_use_the_error_shape(client):
    assert_error(client.get("/nowhere"), 404, "NotFound")
    assert_error(client.get("/label"), 405, "MethodNotAllowed")


# --------------------------------------------------------------------------- overload and failures


def test_overload_answers_503_with_retry_after_and_recovers(media):
    settings = ServiceSettings(media_root=media, max_queue=2, retry_after_seconds=7)
    app = create_app(settings, engine=Engine(BrightnessJudge(delay=0.3), EngineConfig(frames_per_segment=2)))
    service = app.state.service

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            calls = [c.post("/label", json=pair(prompt=f"p{i}")) for i in range(4)]
            calls.append(c.post("/label/batch", json={"pairs": [pair(pair_id="x")]}))
            return await asyncio.gather(*calls)

    responses = asyncio.run(scenario())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503, 503, 503], statuses
    for r in responses:
        if r.status_code == 503:
            assert_error(r, 503, "Overloaded", "limit is 2")
            assert r.headers["retry-after"] == "7"
    assert service.admission.active == 0  # every slot came back


def test_judge_failure_is_502_and_the_service_stays_up(media):
    judge = ScriptedFailures([], fail_prompt="doomed")
    config = EngineConfig(frames_per_segment=2, max_attempts=2, backoff_initial=0.01, backoff_max=0.02)
    with make_client(media, judge=judge, config=config) as c:
        body = assert_error(c.post("/label", json=pair(prompt="doomed")), 502, "TransientJudgeError", "500")
        assert "server error" in body["error"]["message"]
        assert c.post("/label", json=pair(prompt="fine")).status_code == 200
        assert metric_value(c.get("/metrics").text, "densepref_judge_errors_total") >= 1


def test_fatal_judge_error_and_spent_budget(media):
    from labeler.schemas import FatalJudgeError

    judge = ScriptedFailures([FatalJudgeError("model 'x' does not exist")])
    with make_client(media, judge=judge) as c:
        assert_error(c.post("/label", json=pair()), 502, "FatalJudgeError", "does not exist")
    with make_client(media, config=EngineConfig(max_requests=0)) as c:
        assert_error(c.post("/label", json=pair()), 503, "BudgetExceeded", "budget")


def test_invalid_judge_answers_and_unrepresentable_records(media):
    from labeler.schemas import Judgment

    class NaNJudge(BrightnessJudge):
        async def judge(self, request):
            return Judgment(label="tie", p_a=float("nan"), p_b=0.0, p_tie=1.0)

    with make_client(media, judge=NaNJudge()) as c:
        assert_error(c.post("/label", json=pair()), 502, "InvalidJudgment", "p_a=nan")
    day_long = inline(n_frames=1)
    day_long["segments"][0]["end_s"] = 86400.0  # one frame per day: no positive fps survives rounding
    with make_client(media) as c:
        assert_error(c.post("/label", json=day_long), 422, "InvalidRecord", "fps")
