"""A rerun on the same --out keeps only labels made the way this run makes them (#24 item 1):
other settings are refused naming what differs, unless --relabel (old files kept aside); a pair
whose videos or prompt changed is labelled again. Real subprocesses, real videos."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from labeler import fingerprint
from labeler.cascade import cheap_path_for
from labeler.errors import SettingsChanged
from labeler.media import video
from labeler.schemas import read_records
from labeler.standin import StandinServer
from tests.conftest import textured_frames
from tests.test_batch_cli import cli
from tests.test_batch_hostile import FPS, label, one_line_error, pair, write_manifest


@pytest.fixture
def clips(tmp_path) -> Path:
    root = tmp_path / "clips"
    root.mkdir()
    for name, seed in (("a.mp4", 1), ("b.mp4", 2), ("c.mp4", 3)):
        video.write_video(root / name, textured_frames(16, seed=seed), FPS, crf=10)
    return root


def test_another_tie_margin_is_refused_until_relabel(clips, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0"), pair(clips, "p1", "b.mp4", "c.mp4")])
    out = tmp_path / "labels.jsonl"
    first = label(manifest, out, tmp_path)
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    sidecar = json.loads(fingerprint.settings_path_for(out).read_text())
    assert sidecar["settings"]["judge_settings"]["tie_margin"] is None

    refused = label(manifest, out, tmp_path, "--tie-margin", "0.05")
    one_line_error(refused, str(out), "judge_settings.tie_margin: null before, 0.05 now", "--relabel")
    assert out.read_bytes() == before  # nothing written

    same = label(manifest, out, tmp_path)  # the settings it was made with: resumes, skips all
    assert same.returncode == 0 and "0 labeled, 0 failed, 2 already done" in same.stdout

    relabel = label(manifest, out, tmp_path, "--tie-margin", "0.05", "--relabel")
    assert relabel.returncode == 0, relabel.stderr
    assert "2 labeled" in relabel.stdout
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("labels.before-") and p.suffix == ".jsonl"]
    assert len(kept) == 1 and kept[0].read_bytes() == before
    assert any(
        p.name.startswith("labels.before-") and p.name.endswith(".settings.json") for p in tmp_path.iterdir()
    )
    assert len(read_records(out)) == 2
    assert (
        json.loads(fingerprint.settings_path_for(out).read_text())["settings"]["judge_settings"]["tie_margin"]
        == 0.05
    )

    again = label(manifest, out, tmp_path, "--tie-margin", "0.05", "--relabel")  # same settings: resumes
    assert again.returncode == 0 and "0 labeled, 0 failed, 2 already done" in again.stdout


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("--frames-per-segment", "4", "frames_per_segment: 8 before, 4 now"),
        ("--segment-seconds", "0.5", "segment_seconds: 1.0 before, 0.5 now"),
        ("--max-side", "64", "max_side: 448 before, 64 now"),
        ("--align-to-latent", "4", "align_to_latent: null before, 4 now"),
    ],
)
def test_engine_settings_are_compared_too(clips, tmp_path, option, value, needle):
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0")])
    out = tmp_path / "labels.jsonl"
    assert label(manifest, out, tmp_path).returncode == 0
    one_line_error(label(manifest, out, tmp_path, option, value), needle)


def test_an_output_without_sidecar_is_compared_on_its_records(clips, tmp_path):
    """An OUT written before the sidecar existed: its records' labeler block decides."""
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0")])
    out = tmp_path / "labels.jsonl"
    assert label(manifest, out, tmp_path).returncode == 0
    fingerprint.settings_path_for(out).unlink()
    one_line_error(
        label(manifest, out, tmp_path, "--frames-per-segment", "4"), "frames_per_segment: 8 before, 4 now"
    )
    adopted = label(manifest, out, tmp_path)
    assert adopted.returncode == 0 and "1 already done" in adopted.stdout
    assert fingerprint.settings_path_for(out).exists()


def test_a_pair_whose_video_changed_is_labelled_again(clips, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0"), pair(clips, "p1", "b.mp4", "c.mp4")])
    out = tmp_path / "labels.jsonl"
    assert label(manifest, out, tmp_path).returncode == 0
    old = {r.pair_id: r for r in read_records(out)}
    assert old["p0"].video_sha256 == {
        "a": video.file_hash(clips / "a.mp4"),
        "b": video.file_hash(clips / "b.mp4"),
    }

    # a.mp4 regenerated (p0 only reads it), with its size and mtime restored
    st = os.stat(clips / "a.mp4")
    video.write_video(clips / "a.mp4", textured_frames(16, seed=7), FPS, crf=10)
    os.utime(clips / "a.mp4", ns=(st.st_atime_ns, st.st_mtime_ns))

    rerun = label(manifest, out, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 labeled, 0 failed, 1 already done" in rerun.stdout
    assert "1 labelled again" in rerun.stdout
    records = read_records(out)
    assert sorted(r.pair_id for r in records) == ["p0", "p1"]  # one record per pair, never two
    new = {r.pair_id: r for r in records}
    assert new["p0"].video_sha256 == {
        "a": video.file_hash(clips / "a.mp4"),
        "b": video.file_hash(clips / "b.mp4"),
    }
    assert new["p0"].video_sha256 != old["p0"].video_sha256
    assert new["p1"] == old["p1"]


def test_a_pair_whose_prompt_changed_is_labelled_again(clips, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0"), pair(clips, "p1", "b.mp4", "c.mp4")])
    out = tmp_path / "labels.jsonl"
    assert label(manifest, out, tmp_path).returncode == 0
    write_manifest(manifest, [pair(clips, "p0", prompt="another scene"), pair(clips, "p1", "b.mp4", "c.mp4")])
    rerun = label(manifest, out, tmp_path)
    assert rerun.returncode == 0 and "1 labeled, 0 failed, 1 already done" in rerun.stdout
    assert {r.pair_id: r.prompt for r in read_records(out)} == {"p0": "another scene", "p1": "a scene"}


def test_a_repeated_pair_id_in_out_keeps_its_last_record(clips, tmp_path):
    """A run killed between appending a relabelled pair and dropping its old line leaves two
    records of one pair; the next run keeps the last."""
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0")])
    out = tmp_path / "labels.jsonl"
    assert label(manifest, out, tmp_path).returncode == 0
    line = out.read_text().splitlines()[0]
    newer = json.loads(line)
    newer["segments"][0]["rationale"] = "the newer one"
    out.write_text(line + "\n" + json.dumps(newer) + "\n")
    rerun = label(manifest, out, tmp_path)
    assert rerun.returncode == 0 and "1 already done" in rerun.stdout
    records = read_records(out)
    assert len(records) == 1 and records[0].segments[0].rationale == "the newer one"


# ----------------------------------------------------------------------------- the cascade's settings


def _labels(manifest: Path, out: Path, tmp_path: Path, server: StandinServer, *extra: str):
    """The main judge is a real OpenAI-compatible stand-in (a cascade needs one besides metrics)."""
    env = {"OPENAI_API_KEY": "test-key"}
    common = ("--judge", "openai", "--model", "standin-vlm", "--base-url", server.base_url, "--price", "1,4")
    return cli(
        str(manifest),
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
        *common,
        *extra,
        env=env,
    )


def test_a_rerun_with_another_cascade_is_refused_until_relabel_which_moves_the_cheap_labels_aside(
    clips, tmp_path
):
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0"), pair(clips, "p1", "b.mp4", "c.mp4")])
    out = tmp_path / "labels.jsonl"
    share = ("--cascade-from", "metrics", "--escalate-share", "0.5")
    below = ("--cascade-from", "metrics", "--escalate-below", "0.5")
    with StandinServer(policy="hash") as server:
        first = _labels(manifest, out, tmp_path, server, *share)
        assert first.returncode == 0, first.stderr
        recorded = json.loads(fingerprint.settings_path_for(out).read_text())["settings"]["cascade"]
        assert recorded["cheap_judge"] == "metrics" and recorded["escalate_share"] == 0.5
        assert recorded["cheap_judge_settings"]["judge"] == "metrics"
        before, cheap_before = out.read_bytes(), cheap_path_for(out).read_bytes()

        for extra, needle in (
            (below, "cascade.escalate_below: null before, 0.5 now"),
            (
                ("--cascade-from", "metrics", "--escalate-share", "0.25"),
                "cascade.escalate_share: 0.5 before, 0.25",
            ),
            ((), 'cascade.cheap_judge: "metrics" before, null now'),  # the cascade turned off
        ):
            one_line_error(_labels(manifest, out, tmp_path, server, *extra), str(out), needle, "--relabel")
        assert out.read_bytes() == before and cheap_path_for(out).read_bytes() == cheap_before

        same = _labels(manifest, out, tmp_path, server, *share)  # the settings it was made with: resumes
        assert same.returncode == 0 and "0 labeled, 0 failed, 2 already done" in same.stdout, same.stdout

        relabel = _labels(manifest, out, tmp_path, server, *below, "--relabel")
        assert relabel.returncode == 0, relabel.stderr
    assert "2 labeled" in relabel.stdout
    kept = {p.name.split(".", 2)[2]: p for p in tmp_path.iterdir() if p.name.startswith("labels.before-")}
    assert kept["jsonl"].read_bytes() == before
    assert kept["cheap.jsonl"].read_bytes() == cheap_before  # pass 1 ran again, not resumed from it
    assert "settings.json" in kept
    assert len(read_records(cheap_path_for(out))) == 2
    settings = json.loads(fingerprint.settings_path_for(out).read_text())["settings"]["cascade"]
    assert settings["escalate_below"] == 0.5 and "escalate_share" not in settings


def test_a_cascade_over_labels_made_without_one_is_refused(clips, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [pair(clips, "p0")])
    out = tmp_path / "labels.jsonl"
    with StandinServer(policy="hash") as server:
        assert _labels(manifest, out, tmp_path, server).returncode == 0
        refused = _labels(
            manifest, out, tmp_path, server, "--cascade-from", "metrics", "--escalate-below", "0.5"
        )
    one_line_error(refused, 'cascade.cheap_judge: null before, "metrics" now', "--relabel")
    assert not cheap_path_for(out).exists()


def test_cheap_labels_alone_are_compared_too(tmp_path):
    """A cascade stopped in pass 1 leaves OUT empty and OUT.cheap.jsonl full: still this sidecar's."""
    out = tmp_path / "labels.jsonl"
    fingerprint.settle(out, {"judge": "openai", "cascade": {"escalate_share": 0.5}}, relabel=False)
    cheap_path_for(out).write_text('{"pair_id": "p0"}\n')
    with pytest.raises(SettingsChanged, match=re.escape("cascade.escalate_share: 0.5 before, 0.25 now")):
        fingerprint.settle(out, {"judge": "openai", "cascade": {"escalate_share": 0.25}}, relabel=False)
    moved = fingerprint.settle(out, {"judge": "openai", "cascade": {"escalate_share": 0.25}}, relabel=True)
    assert sorted(p.name.split(".", 2)[2] for p in moved) == ["cheap.jsonl", "settings.json"]
    assert not cheap_path_for(out).exists()
