"""``align_to_latent`` per request (#23 item 4): ``POST /label`` and each ``/label/batch`` pair may
place every segment boundary on a frame 1 + 4k, as ``labeler.batch --align-to-latent 4`` does, and
the record's labeler block says so; a bad value is a 422 naming the field. Through the real HTTP
service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labeler.media import video
from labeler.schemas import DensePreferenceRecord
from tests.conftest import textured_frames
from tests.service_helpers import running_service
from tests.test_app import blurred

FPS = 8.0


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """Three one-second segments at 8 fps: unaligned boundaries on frames 8 and 16."""
    media = tmp_path_factory.mktemp("media")
    sharp = textured_frames(24, h=48, w=64, seed=4)
    video.write_video(media / "a.mp4", sharp, FPS, crf=8)
    video.write_video(media / "b.mp4", blurred(sharp), FPS, crf=8)
    args = [
        "--media-root",
        str(media),
        "--cache-dir",
        str(tmp_path_factory.mktemp("cache")),
        "--judge",
        "metrics",
    ]
    with running_service(args) as svc:
        yield svc


def body(**extra) -> dict:
    return {"prompt": "a textured wall", "video_a": "a.mp4", "video_b": "b.mp4", **extra}


def starts(record: dict) -> list[int]:
    return [s.start_frame for s in DensePreferenceRecord.model_validate(record).segments]


def test_post_label_aligns_the_boundaries_of_the_request_that_asks(service):
    with service.client() as client:
        plain = client.post("/label", json=body(pair_id="plain"))
        aligned = client.post("/label", json=body(pair_id="aligned", align_to_latent=4))
    assert plain.status_code == 200 and aligned.status_code == 200, aligned.text
    assert starts(plain.json()) == [0, 8, 16]
    assert starts(aligned.json()) == [0, 9, 17]  # every later boundary on a frame 1 + 4k
    assert "align_to_latent" not in plain.json()["labeler"]
    assert aligned.json()["labeler"]["align_to_latent"] == 4


def test_batch_pairs_each_carry_their_own(service):
    pairs = [body(pair_id="p4", align_to_latent=4), body(pair_id="p8", align_to_latent=8), body(pair_id="p")]
    with service.client() as client, client.stream("POST", "/label/batch", json={"pairs": pairs}) as response:
        assert response.status_code == 200
        lines = {line["pair_id"]: line for line in map(json.loads, response.iter_lines()) if line}
    assert starts(lines["p4"]) == [0, 9, 17] and lines["p4"]["labeler"]["align_to_latent"] == 4
    assert starts(lines["p8"]) == [0, 9, 17] and lines["p8"]["labeler"]["align_to_latent"] == 8
    assert starts(lines["p"]) == [0, 8, 16] and "align_to_latent" not in lines["p"]["labeler"]


@pytest.mark.parametrize("bad", [0, -4, "4", 2.5, True, [4]])
def test_a_bad_value_is_a_422_naming_the_field(service, bad):
    with service.client() as client:
        refused = client.post("/label", json=body(align_to_latent=bad))
        in_batch = client.post("/label/batch", json={"pairs": [body(pair_id="x", align_to_latent=bad)]})
    for response in (refused, in_batch):
        assert response.status_code == 422, response.text
        assert "align_to_latent" in response.text


def test_inline_frames_refuse_it(service):
    """Inline segments are cut by the caller: there is nothing to align."""
    inline = {"prompt": "p", "segments": [{"frames_a": ["x"], "frames_b": ["x"], "start_s": 0, "end_s": 1}]}
    with service.client() as client:
        refused = client.post("/label", json={**inline, "align_to_latent": 4})
    assert refused.status_code == 422 and "align_to_latent" in refused.text


def test_a_manifest_entry_refuses_a_bad_value_too(tmp_path: Path):
    from pydantic import ValidationError

    from labeler.schemas import ManifestEntry

    for bad in (0, "4", 2.5):
        with pytest.raises(ValidationError, match="align_to_latent"):
            ManifestEntry(pair_id="p", prompt="p", video_a="a", video_b="b", align_to_latent=bad)


def test_a_manifest_pair_may_carry_its_own_too(tmp_path: Path):
    """The request field reaches the engine as ManifestEntry.align_to_latent: a batch manifest line
    may carry it as well, over the job's --align-to-latent (here: none)."""
    from labeler.schemas import read_records
    from tests.test_batch_cli import cli

    sharp = textured_frames(24, h=48, w=64, seed=4)
    video.write_video(tmp_path / "a.mp4", sharp, FPS, crf=8)
    video.write_video(tmp_path / "b.mp4", blurred(sharp), FPS, crf=8)
    rows = [body(pair_id="own", align_to_latent=4), body(pair_id="job")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "labels.jsonl"
    run = cli(str(tmp_path / "m.jsonl"), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet")
    assert run.returncode == 0, run.stderr
    records = {r.pair_id: r for r in read_records(out)}
    assert [s.start_frame for s in records["own"].segments] == [0, 9, 17]
    assert records["own"].labeler.model_dump()["align_to_latent"] == 4
    assert [s.start_frame for s in records["job"].segments] == [0, 8, 16]
