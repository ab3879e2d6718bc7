"""The cascade through the HTTP service (``POST /label`` with ``cascade``): the service's openai judge
(the local stand-in) is asked only about the segments the embedded metrics judge is least sure of."""

from __future__ import annotations

from pathlib import Path

import pytest

from labeler.cascade import segment_confidence
from labeler.media import video
from labeler.schemas import DensePreferenceRecord
from labeler.standin import StandinServer
from tests.conftest import textured_frames
from tests.service_helpers import running_service
from tests.test_app import blurred

pytestmark = pytest.mark.slow
FPS = 8.0


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Four one-second segments: B is blurred in the first two only (the metrics judge is sure
    there), and the same clip elsewhere apart from its encoding."""
    root = tmp_path_factory.mktemp("media")
    sharp = textured_frames(32, h=64, w=96, seed=5)
    b = sharp.copy()
    b[:16] = blurred(sharp[:16])
    video.write_video(root / "a.mp4", sharp, FPS, crf=8)
    video.write_video(root / "b.mp4", b, FPS, crf=8)
    return root


def test_post_label_with_a_cascade_asks_the_vlm_only_about_the_least_confident(media, tmp_path):
    body = {"prompt": "a textured wall", "video_a": "a.mp4", "video_b": "b.mp4"}
    with StandinServer() as standin:
        args = ["--media-root", str(media), "--base-url", standin.base_url, "--judge", "openai"]
        args += [
            "--model",
            "standin-vlm",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--frames-per-segment",
            "4",
        ]
        with running_service(args) as svc, svc.client() as client:
            response = client.post("/label", json={**body, "cascade": {"escalate_share": 0.5}})
            assert response.status_code == 200, response.text
            record = DensePreferenceRecord.model_validate(response.json())
            assert standin.stats()["answered"] == 2 * 2  # two of four segments, both orders
            escalated = [s for s in record.segments if s.decided_by == "openai"]
            kept = [s for s in record.segments if s.decided_by == "metrics"]
            assert len(escalated) == 2 and len(kept) == 2
            cheap_conf = {s.index: max(s.cheap.p_a, s.cheap.p_b, s.cheap.p_tie) for s in record.segments}
            assert max(cheap_conf[s.index] for s in escalated) <= min(segment_confidence(s) for s in kept)
            assert record.labeler.model_dump()["cascade"]["escalate_share"] == 0.5

            nothing = client.post("/label", json={**body, "pair_id": "n", "cascade": {"escalate_below": 0.0}})
            assert nothing.status_code == 200 and standin.stats()["answered"] == 4  # nothing escalated
            assert {s["decided_by"] for s in nothing.json()["segments"]} == {"metrics"}

            # A request's own align_to_latent cuts the cheap and the main judge's segments alike.
            aligned = client.post(
                "/label",
                json={**body, "pair_id": "al", "align_to_latent": 4, "cascade": {"escalate_below": 0.0}},
            )
            assert aligned.status_code == 200, aligned.text
            assert [s["start_frame"] for s in aligned.json()["segments"]] == [0, 9, 17, 25]
            assert aligned.json()["labeler"]["align_to_latent"] == 4

            for bad in ({}, {"escalate_share": 0.5, "escalate_below": 0.5}, {"escalate_share": 2}):
                refused = client.post("/label", json={**body, "cascade": bad})
                assert refused.status_code == 422, refused.text
            assert standin.stats()["answered"] == 4
