"""Hostile input to the annotation store (issue #15 items 1, 2, 24, 26): notes holding the line
separators that ``str.splitlines`` splits on, manifests whose names differ only by ``/`` vs ``__``,
concurrent exports of one file, and a long answer log read once, not on every save."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from labeler.fileio import read_lines
from labeler.service.annotate.store import (
    AnnotationStore,
    Answer,
    export_annotations,
    manifest_key,
    plan_manifest,
)
from tests.test_annotate_api import SEGMENTS, make_client, write_media_root

TRICKY_NOTES = ["line\u2028separator", "para\u2029graph", "next\u0085line", "form\x0cfeed\x0bvtab"]


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    write_media_root(root)
    return root


def _post(client: TestClient, manifest: str, **fields: Any) -> Any:
    body = {"manifest": manifest, "pair_id": "p1", "segment": 0, "label": "A", "annotator": "ann1"}
    r = client.post("/annotations", json={**body, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def test_notes_with_unicode_line_separators_are_read_back_and_exported(
    media_root: Path, tmp_path: Path
) -> None:
    with make_client(media_root, annotations_dir=tmp_path / "ann") as client:
        for seg, note in enumerate(TRICKY_NOTES[: SEGMENTS["p1"]]):
            _post(client, "manifest.jsonl", segment=seg, note=note)
        saved = client.get(
            "/annotate/api/pairs", params={"manifest": "manifest.jsonl", "annotator": "ann1"}
        ).json()
        p1 = saved["pairs"][0]
        assert {k: v["note"] for k, v in p1["answers"].items()} == {
            str(i): n for i, n in enumerate(TRICKY_NOTES[:3])
        }
        assert saved["pairs_done"] == 1
        out = client.post("/annotations/export", json={"manifest": "manifest.jsonl", "annotator": "ann1"})
        assert out.json()["written"] == ["p1"]
        [line] = read_lines(tmp_path / "ann" / "manifest.ann1.human.jsonl")
        assert [s["note"] for s in json.loads(line)["segments"]] == TRICKY_NOTES[:3]


def test_a_fresh_store_reads_tricky_notes_from_the_log(tmp_path: Path) -> None:
    AnnotationStore(tmp_path).append("m", Answer("p", 0, "B", "a", note=TRICKY_NOTES[0]))
    AnnotationStore(tmp_path).append("m", Answer("p", 1, "A", "a", note=TRICKY_NOTES[2]))
    latest = AnnotationStore(tmp_path).answers("m", "a")
    assert {k: v.note for k, v in latest.items()} == {("p", 0): TRICKY_NOTES[0], ("p", 1): TRICKY_NOTES[2]}


def test_manifest_keys_never_collide() -> None:
    names = [
        "sub/m.jsonl",
        "sub__m.jsonl",
        "sub%2Fm.jsonl",
        "m.jsonl",
        "m.json",
        "m.json.jsonl",
        "a/b/c.jsonl",
    ]
    keys = [manifest_key(n) for n in names]
    assert len(set(keys)) == len(names), dict(zip(names, keys, strict=True))
    assert manifest_key("manifest.jsonl") == "manifest"  # the README's file names stay as they were
    assert manifest_key("./sub//m.jsonl") == manifest_key("sub/m.jsonl")
    assert all("/" not in k for k in keys)


def test_manifests_differing_by_slash_or_double_underscore_keep_apart(tmp_path: Path) -> None:
    root = tmp_path / "media"
    write_media_root(root)
    (root / "sub").mkdir()
    text = (root / "manifest.jsonl").read_text().replace('"clips/', '"../clips/')
    (root / "sub" / "m.jsonl").write_text(text.replace('"../clips/', '"' + str(root / "clips") + "/"))
    (root / "sub__m.jsonl").write_text((root / "manifest.jsonl").read_text())
    with make_client(root) as client:
        _post(client, "sub/m.jsonl", label="B", note="from sub/m")
        other = client.get("/annotate/api/pairs", params={"manifest": "sub__m.jsonl", "annotator": "ann1"})
        assert other.status_code == 200 and other.json()["pairs"][0]["answers"] == {}
        mine = client.get("/annotate/api/pairs", params={"manifest": "sub/m.jsonl", "annotator": "ann1"})
        assert mine.json()["pairs"][0]["answers"] == {"0": {"label": "B", "note": "from sub/m"}}
        for m in ("sub/m.jsonl", "sub__m.jsonl"):  # an export needs a finished pair
            for seg in range(1 if m == "sub/m.jsonl" else 0, SEGMENTS["p1"]):
                _post(client, m, segment=seg)
        paths = {
            m: client.post("/annotations/export", json={"manifest": m, "annotator": "ann1"}).json()["path"]
            for m in ("sub/m.jsonl", "sub__m.jsonl")
        }
        assert paths["sub/m.jsonl"] != paths["sub__m.jsonl"]


def test_concurrent_exports_of_one_file_all_succeed(media_root: Path, tmp_path: Path) -> None:
    store = AnnotationStore(tmp_path)
    for seg in range(SEGMENTS["p1"]):
        store.append("manifest", Answer("p1", seg, "A", "ann1"))
    plan = plan_manifest(media_root / "manifest.jsonl", "manifest.jsonl")
    errors: list[BaseException] = []

    def export() -> None:
        try:
            for _ in range(10):
                export_annotations(plan, store, "ann1")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=export) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(read_lines(store.export_path("manifest", "ann1"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.ann1.human.jsonl",
        "manifest.answers.jsonl",
    ]  # no temporary left behind


def test_a_save_reads_only_the_new_lines_of_the_log(tmp_path: Path) -> None:
    store = AnnotationStore(tmp_path)
    for i in range(1000):
        store.append("m", Answer(f"p{i}", 0, "A", "a"))
    assert len(store.answers("m", "a")) == 1000
    # Overwrite the indexed part in place (same file, same size): a store that re-read the whole
    # log on every save would now lose those answers; an index reads only what was appended.
    log = store.log_path("m")
    size = log.stat().st_size
    with log.open("r+b") as fh:
        fh.write(b" " * (size - 1) + b"\n")
    store.append("m", Answer("new", 0, "B", "a"))
    latest = store.answers("m", "a")
    assert len(latest) == 1001 and latest[("new", 0)].label == "B"


def test_an_index_notices_a_replaced_log(tmp_path: Path) -> None:
    store = AnnotationStore(tmp_path)
    store.append("m", Answer("p", 0, "A", "a"))
    assert store.answers("m", "a")[("p", 0)].label == "A"
    replacement = tmp_path / "other.jsonl"
    replacement.write_text(
        json.dumps({"pair_id": "q", "segment": 0, "label": "tie", "annotator": "a"}) + "\n"
    )
    replacement.replace(store.log_path("m"))
    assert {k: v.label for k, v in store.answers("m", "a").items()} == {("q", 0): "tie"}
