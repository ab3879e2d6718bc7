"""The annotation page's review queue (labeler.service.annotate.queue): pairs ordered by a judge's
least-confident segment, pre-annotations only when asked, the reference video, the rubric, overlap
assignment over a team, and an export with nothing finished refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from labeler.media.video import write_video
from labeler.schemas import DensePreferenceRecord
from labeler.service.annotate.queue import RUBRIC, assignees
from tests.conftest import textured_frames
from tests.test_annotate_api import FPS, make_client, post, write_media_root


def _judge_record(
    pair_id: str, probs: list[tuple[float, float, float]], frames: list[tuple[int, int]]
) -> str:
    segments = [
        {
            "index": i,
            "start_frame": s,
            "end_frame": e,
            "start_s": s / FPS,
            "end_s": e / FPS,
            "label": max(zip(("A", "B", "tie"), p, strict=True), key=lambda x: x[1])[0],
            "p_a": p[0],
            "p_b": p[1],
            "p_tie": p[2],
        }
        for i, (p, (s, e)) in enumerate(zip(probs, frames, strict=True))
    ]
    record = {
        "pair_id": pair_id,
        "prompt": "x",
        "video_a": "a",
        "video_b": "b",
        "fps": FPS,
        "num_frames": frames[-1][1],
        "segments": segments,
        "video_label": "tie",
        "video_score": 0.0,
        "labeler": {"judge": "metrics"},
    }
    return DensePreferenceRecord.model_validate(record).model_dump_json() + "\n"


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The annotation API tests' pairs p1 (3 segments), p2 (2), plus p3 with a reference video;
    a judge is sure of p1 (least-confident segment 0.7) and unsure of p2 (0.4); p3 is unlabeled."""
    root = tmp_path_factory.mktemp("media")
    manifest = write_media_root(root)
    write_video(root / "clips/p3_a.mp4", textured_frames(24, seed=7), FPS, crf=30)
    write_video(root / "clips/p3_b.mp4", textured_frames(24, seed=8), FPS, crf=30)
    write_video(root / "clips/p3_ref.mp4", textured_frames(24, seed=9), FPS, crf=30)
    row = {"pair_id": "p3", "prompt": "p3", "video_a": "clips/p3_a.mp4", "video_b": "clips/p3_b.mp4"}
    row["reference"] = "clips/p3_ref.mp4"
    with manifest.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    (root / "judge.jsonl").write_text(
        _judge_record(
            "p1", [(0.8, 0.1, 0.1), (0.7, 0.2, 0.1), (0.1, 0.9, 0.0)], [(0, 24), (24, 48), (48, 60)]
        )
        + _judge_record("p2", [(0.9, 0.05, 0.05), (0.3, 0.3, 0.4)], [(0, 24), (24, 48)])
    )
    (root / "broken.jsonl").write_text("{not json\n{}\n")
    return root


@pytest.fixture
def client(media_root: Path, tmp_path: Path) -> TestClient:
    with make_client(media_root, annotations_dir=tmp_path / "ann") as c:
        yield c


def pairs(client: TestClient, **params: str) -> dict:
    response = client.get("/annotate/api/pairs", params={"manifest": "manifest.jsonl", **params})
    assert response.status_code == 200, response.text
    return response.json()


def test_least_confident_first_with_unlabeled_pairs_last(client: TestClient) -> None:
    plain = pairs(client)
    assert [p["pair_id"] for p in plain["pairs"]] == ["p1", "p2", "p3"] and plain["rubric"] == RUBRIC
    queue = pairs(client, labels="judge.jsonl", order="least-confident")
    assert [p["pair_id"] for p in queue["pairs"]] == ["p2", "p1", "p3"]
    assert [p["confidence"] for p in queue["pairs"]] == pytest.approx([0.4, 0.7, None])


def test_preannotations_are_hidden_unless_asked(client: TestClient) -> None:
    hidden = pairs(client, labels="judge.jsonl", order="least-confident")
    assert all("preannotation" not in p for p in hidden["pairs"])
    shown = {
        p["pair_id"]: p["preannotation"]
        for p in pairs(client, labels="judge.jsonl", preannotations="1")["pairs"]
    }
    assert shown["p3"] is None and shown["p1"]["judge"] == "metrics"
    assert [shown["p1"]["segments"][k]["label"] for k in "012"] == ["A", "A", "B"]


def test_reference_video_when_the_manifest_has_one(client: TestClient) -> None:
    by_id = {p["pair_id"]: p["videos"] for p in pairs(client)["pairs"]}
    assert "ref" not in by_id["p1"] and "/media/clips/p3_ref.mp4" in by_id["p3"]["ref"]
    assert client.get(by_id["p3"]["ref"]).status_code == 200


def test_bad_queue_options_are_named(client: TestClient) -> None:
    for params, status, word in (
        ({"order": "least-confident"}, 422, "labels"),
        ({"order": "random"}, 422, "order"),
        ({"labels": "broken.jsonl"}, 400, "broken.jsonl"),
        ({"labels": "../outside.jsonl"}, 400, "labels"),
        ({"labels": "missing.jsonl"}, 404, "labels"),
        ({"team": "a,b", "annotator": "c"}, 422, "team"),
        ({"team": "a,b", "annotator": "a", "overlap": "1.5"}, 422, "overlap"),
    ):
        r = client.get("/annotate/api/pairs", params={"manifest": "manifest.jsonl", **params})
        assert r.status_code == status and word in r.text, (params, r.text)


def test_overlap_assignment_gives_a_share_of_pairs_to_two_annotators() -> None:
    team = ["ann", "bob", "cy"]
    ids = [f"pair{i}" for i in range(2000)]
    for overlap in (0.0, 0.2, 1.0):
        who = [assignees(pid, team, overlap) for pid in ids]
        doubled = sum(len(w) == 2 for w in who) / len(ids)
        assert doubled == pytest.approx(overlap, abs=0.04)
        assert all(len(set(w)) == len(w) for w in who)  # never twice the same annotator
    counts = {name: sum(name in assignees(pid, team, 0.2) for pid in ids) for name in team}
    assert min(counts.values()) > 0.85 * max(counts.values())  # spread evenly


def test_team_members_get_their_pairs_and_the_overlap_twice(client: TestClient) -> None:
    team = "ann,bob"
    mine = {
        name: {p["pair_id"] for p in pairs(client, annotator=name, team=team, overlap=str(ov))["pairs"]}
        for name, ov in (("ann", 0.0), ("bob", 0.0))
    }
    assert mine["ann"] | mine["bob"] == {"p1", "p2", "p3"} and not mine["ann"] & mine["bob"]
    both = [pairs(client, annotator=n, team=team, overlap="1")["pairs"] for n in ("ann", "bob")]
    assert all({p["pair_id"] for p in b} == {"p1", "p2", "p3"} for b in both)


def test_export_with_nothing_finished_is_refused(client: TestClient) -> None:
    body = {"manifest": "manifest.jsonl", "annotator": "ann1"}
    refused = client.post("/annotations/export", json=body)
    assert refused.status_code == 409 and "not finished any pair" in refused.text
    store = client.app.state.annotation_store
    assert not store.export_path("manifest", "ann1").exists()
    post(client, pair_id="p2", segment=0, label="A")
    assert client.post("/annotations/export", json=body).status_code == 409  # one of two segments
    post(client, pair_id="p2", segment=1, label="B")
    done = client.post("/annotations/export", json=body)
    assert done.status_code == 200 and done.json()["written"] == ["p2"]
