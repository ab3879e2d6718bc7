"""Label files travel (#24 item 4): a record names a video the manifest gave relative by a path
relative to the record's own file, so a project folder moved elsewhere still trains; absolute
paths stay as given; the annotation page's export follows the same rule, and the trainer reads
both as they are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from labeler.media import video
from labeler.record_paths import written_path
from labeler.schemas import read_records
from tests.conftest import textured_frames
from tests.test_annotate_api import make_client, post, write_media_root
from tests.test_batch_hostile import FPS, label, write_manifest
from trainer.data import DataError, resolve_video


def _project(root: Path) -> Path:
    """project/data/pairs.jsonl naming data/clips/{a,b}.mp4 relatively; the labels go to project/out/."""
    clips = root / "project" / "data" / "clips"
    clips.mkdir(parents=True)
    video.write_video(clips / "a.mp4", textured_frames(16, seed=1), FPS, crf=10)
    video.write_video(clips / "b.mp4", textured_frames(16, seed=2), FPS, crf=10)
    row = {
        "pair_id": "p0",
        "prompt": "p",
        "video_a": "clips/a.mp4",
        "video_b": "clips/b.mp4",
        "reference": "clips/a.mp4",
    }
    return write_manifest(root / "project" / "data" / "pairs.jsonl", [row])


def test_records_of_a_relative_manifest_hold_relative_paths_that_survive_a_move(tmp_path):
    manifest = _project(tmp_path)
    out = tmp_path / "project" / "out" / "labels.jsonl"
    proc = label(manifest, out, tmp_path)
    assert proc.returncode == 0, proc.stderr
    [rec] = read_records(out)
    assert (rec.video_a, rec.video_b, rec.reference) == (
        "../data/clips/a.mp4",
        "../data/clips/b.mp4",
        "../data/clips/a.mp4",
    )
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "project", moved)
    labels = moved / "out" / "labels.jsonl"
    [rec] = read_records(labels)
    assert resolve_video(rec.video_a, labels.parent, rec.pair_id) == moved / "out" / "../data/clips/a.mp4"
    assert resolve_video(rec.video_b, labels.parent, rec.pair_id).is_file()


def test_absolute_manifest_paths_stay_absolute(tmp_path):
    manifest = _project(tmp_path)
    clips = manifest.parent / "clips"
    write_manifest(
        manifest,
        [{"pair_id": "p0", "prompt": "p", "video_a": str(clips / "a.mp4"), "video_b": str(clips / "b.mp4")}],
    )
    out = tmp_path / "labels.jsonl"
    assert label(manifest, out, tmp_path).returncode == 0
    [rec] = read_records(out)
    assert (rec.video_a, rec.video_b) == (str(clips / "a.mp4"), str(clips / "b.mp4"))


def test_written_path():
    folder = Path("/p/out")
    assert written_path("clips/a.mp4", "/p/data/clips/a.mp4", folder) == "../data/clips/a.mp4"
    assert written_path("/abs/a.mp4", "/abs/a.mp4", folder) == "/abs/a.mp4"


def test_the_annotation_export_is_read_by_the_trainer_as_it_is(tmp_path):
    """The export lives in <media root>/.annotations/; its paths resolve from there."""
    write_media_root(tmp_path)
    with make_client(tmp_path) as c:
        for seg in range(3):
            assert post(c, pair_id="p1", segment=seg, label="A").status_code == 200
        r = c.post("/annotations/export", json={"manifest": "manifest.jsonl", "annotator": "ann1"})
        assert r.status_code == 200, r.text
    export = tmp_path / r.json()["path"]  # the service names it relative to the media root
    assert export.parent == tmp_path / ".annotations"
    [rec] = read_records(export)
    assert rec.video_a == "../clips/p1_a.mp4"
    assert (
        resolve_video(rec.video_a, export.parent, rec.pair_id).resolve()
        == (tmp_path / "clips/p1_a.mp4").resolve()
    )


def test_the_trainer_names_video_root_when_a_video_is_missing(tmp_path):
    with pytest.raises(DataError, match="--video-root"):
        resolve_video("clips/nope.mp4", tmp_path, "p0")


def test_the_record_line_keeps_the_manifest_spelling(tmp_path):
    manifest = _project(tmp_path)
    out = tmp_path / "project" / "data" / "labels.jsonl"  # beside the manifest: the manifest's own paths
    assert label(manifest, out, tmp_path).returncode == 0
    assert json.loads(out.read_text())["video_a"] == "clips/a.mp4"
