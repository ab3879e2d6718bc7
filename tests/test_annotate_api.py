"""Server side of the annotation page (labeler.service.annotate.routes, labeler.service.annotate.store, labeler.service.media_stream):
the pairs API, answer validation, storage, export to the dense preference schema, /media with range
requests and path rules, and auth on all of it. The page itself is driven in test_annotate_browser.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from labeler.agreement.compute import compute_agreement
from labeler.engine import Engine
from labeler.media.video import write_video
from labeler.schemas import iter_manifest, read_records
from labeler.service.annotate.routes import blind_swapped
from labeler.service.annotate.store import AnnotationStore, Answer, manifest_key
from labeler.service.app import create_app
from labeler.service.media_stream import SIGNED_URL_SECONDS, media_url
from labeler.service.settings import ServiceSettings
from tests.conftest import textured_frames
from tests.fake_judges import BrightnessJudge

FPS = 24.0
# p1: 60 frames -> segments [0,24) [24,48) [48,60); p2: 48 frames -> [0,24) [24,48).
PAIRS = {"p1": 60, "p2": 48}
SEGMENTS = {"p1": 3, "p2": 2}
TOKEN = "s3cret-token"


def write_media_root(root: Path) -> Path:
    """Two aligned pairs, plus one entry whose video is missing (it must become a listed problem)."""
    rows = []
    for k, (pid, n) in enumerate(PAIRS.items()):
        write_video(root / f"clips/{pid}_a.mp4", textured_frames(n, seed=2 * k), FPS, crf=30)
        write_video(root / f"clips/{pid}_b.mp4", textured_frames(n, seed=2 * k + 1), FPS, crf=30)
        rows.append(
            {
                "pair_id": pid,
                "prompt": f"prompt of {pid}",
                "video_a": f"clips/{pid}_a.mp4",
                "video_b": f"clips/{pid}_b.mp4",
                "meta": {"k": k},
            }
        )
    rows.append(
        {"pair_id": "gone", "prompt": "x", "video_a": "clips/nope_a.mp4", "video_b": "clips/nope_b.mp4"}
    )
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    write_media_root(root)
    return root


def make_client(root: Path, token: str | None = None, annotations_dir: Path | None = None) -> TestClient:
    """The real app; its engine (default segmentation, a scripted judge) labels pairs for the join test."""
    settings = ServiceSettings(media_root=root, api_token=token, annotations_dir=annotations_dir)
    return TestClient(create_app(settings, engine=Engine(BrightnessJudge())))


@pytest.fixture
def client(media_root: Path, tmp_path: Path) -> TestClient:
    with make_client(media_root, annotations_dir=tmp_path / "ann") as c:
        yield c


def post(client: TestClient, **fields: Any) -> Any:
    body = {"manifest": "manifest.jsonl", "pair_id": "p1", "segment": 0, "label": "A", "annotator": "ann1"}
    body.update(fields)
    return client.post("/annotations", json={k: v for k, v in body.items() if v is not ...})


def pairs(client: TestClient, annotator: str = "ann1", **params: Any) -> dict[str, Any]:
    r = client.get(
        "/annotate/api/pairs", params={"manifest": "manifest.jsonl", "annotator": annotator, **params}
    )
    assert r.status_code == 200, r.text
    return r.json()


# --------------------------------------------------------------------------- pairs API


def test_pairs_api_lists_segments_media_and_problems(client: TestClient) -> None:
    data = pairs(client)
    assert [p["pair_id"] for p in data["pairs"]] == ["p1", "p2"]
    assert data["pairs_total"] == 2 and data["pairs_done"] == 0
    p1 = data["pairs"][0]
    assert p1["prompt"] == "prompt of p1" and p1["fps"] == FPS and p1["num_frames"] == 60
    assert [(s["start_frame"], s["end_frame"]) for s in p1["segments"]] == [(0, 24), (24, 48), (48, 60)]
    assert [(s["start_s"], s["end_s"]) for s in p1["segments"]] == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]
    assert p1["videos"] == {"A": "/media/clips/p1_a.mp4", "B": "/media/clips/p1_b.mp4"}
    assert p1["swapped"] is False and p1["answers"] == {}
    [problem] = data["problems"]
    assert problem == {
        "pair_id": "gone",
        "type": "VideoReadError",
        "message": "clips/nope_a.mp4: file not found",
    }


def test_pairs_with_videos_outside_the_media_root_are_problems(tmp_path: Path) -> None:
    root = tmp_path / "media"
    write_media_root(root)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    write_video(outside / "x.mp4", textured_frames(24), FPS, crf=30)
    (root / "clips" / "link.mp4").symlink_to(outside / "x.mp4")
    rows = [
        {"pair_id": "abs", "prompt": "", "video_a": str(outside / "x.mp4"), "video_b": "clips/p2_b.mp4"},
        {"pair_id": "link", "prompt": "", "video_a": "clips/p2_a.mp4", "video_b": "clips/link.mp4"},
        {"pair_id": "up", "prompt": "", "video_a": "../elsewhere/x.mp4", "video_b": "clips/p2_b.mp4"},
    ]
    (root / "outside.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with make_client(root) as c:
        data = c.get("/annotate/api/pairs", params={"manifest": "outside.jsonl"}).json()
        assert data["pairs"] == []
        assert {p["pair_id"]: p["type"] for p in data["problems"]} == dict.fromkeys(
            ("abs", "link", "up"), "PathOutsideMediaRoot"
        )
        assert "video_b: 'clips/link.mp4'" in data["problems"][1]["message"]
        r = post(c, manifest="outside.jsonl", pair_id="link")
        assert r.status_code == 404 and "pair_id" in r.json()["error"]["message"]


def test_segments_are_the_engines_segments(client: TestClient, media_root: Path) -> None:
    """The page cuts pairs exactly as the service's engine does, so records join on (pair_id, index)."""
    engine = client.app.state.service.engine
    by_id = {p["pair_id"]: p for p in pairs(client)["pairs"]}
    for entry in iter_manifest(media_root / "manifest.jsonl"):
        if getattr(entry, "pair_id", None) in by_id:
            plan = engine.plan_pair(entry)
            assert [(s["start_frame"], s["end_frame"]) for s in by_id[entry.pair_id]["segments"]] == [
                (s.start_frame, s.end_frame) for s in plan.segments
            ]


def test_blind_mode_side_order_is_fixed_per_annotator_and_pair(client: TestClient) -> None:
    first = {p["pair_id"]: p["swapped"] for p in pairs(client, "ann1", blind=1)["pairs"]}
    again = {p["pair_id"]: p["swapped"] for p in pairs(client, "ann1", blind=1)["pairs"]}
    assert first == again == {pid: blind_swapped("manifest.jsonl", "ann1", pid) for pid in PAIRS}
    assert not any(p["swapped"] for p in pairs(client, "ann1")["pairs"])  # not blind: never swapped
    # Over many pairs and annotators both orders occur, about half each.
    flags = [blind_swapped("m.jsonl", f"a{i}", f"p{j}") for i in range(10) for j in range(40)]
    assert 150 < sum(flags) < 250


def test_manifest_path_rules(client: TestClient, media_root: Path) -> None:
    for bad, status in [
        ("../manifest.jsonl", 400),
        ("/etc/passwd", 400),
        ("http://x/m.jsonl", 400),
        ("missing.jsonl", 404),
    ]:
        r = client.get("/annotate/api/pairs", params={"manifest": bad})
        assert r.status_code == status, (bad, r.text)
        assert r.json()["error"]["message"].startswith("manifest:")


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("fields", "status", "field"),
    [
        ({"pair_id": "nope"}, 404, "pair_id"),
        ({"pair_id": "gone"}, 404, "pair_id"),  # listed in the manifest but not usable
        ({"pair_id": ""}, 422, "pair_id"),
        ({"pair_id": ...}, 422, "pair_id"),
        ({"segment": 3}, 422, "segment"),  # p1 has segments 0..2
        ({"segment": -1}, 422, "segment"),
        ({"segment": "first"}, 422, "segment"),
        ({"label": "C"}, 422, "label"),
        ({"label": "a"}, 422, "label"),
        ({"label": ...}, 422, "label"),
        ({"annotator": ""}, 422, "annotator"),
        ({"annotator": "   "}, 422, "annotator"),
        ({"annotator": "a/b"}, 422, "annotator"),
        ({"annotator": "x" * 65}, 422, "annotator"),
        ({"manifest": "missing.jsonl"}, 404, "manifest"),
        ({"manifest": "../x.jsonl"}, 400, "manifest"),
        ({"note": "n" * 2001}, 422, "note"),
        ({"extra": 1}, 422, "extra"),
    ],
)
def test_bad_annotation_posts_name_the_field(
    client: TestClient, fields: dict, status: int, field: str
) -> None:
    r = post(client, **fields)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"type", "message"}
    assert field in error["message"]
    assert pairs(client)["pairs"][0]["answers"] == {}  # nothing was stored


def test_answers_last_wins_with_notes_and_progress(client: TestClient) -> None:
    assert post(client, segment=0, label="A").status_code == 200
    assert post(client, segment=0, label="tie", note="  flicker at 0.5 s ").status_code == 200
    r = post(client, segment=1, label="B")
    assert r.json()["pairs_done"] == 0
    r = post(client, segment=2, label="A")
    assert r.json() == {
        "saved": {"pair_id": "p1", "segment": 2, "label": "A", "note": None},
        "pairs_done": 1,
        "pairs_total": 2,
    }
    post(client, annotator="other", segment=1, label="A")
    saved = pairs(client)["pairs"][0]["answers"]
    assert saved == {
        "0": {"label": "tie", "note": "flicker at 0.5 s"},
        "1": {"label": "B", "note": None},
        "2": {"label": "A", "note": None},
    }
    assert pairs(client, "other")["pairs"][0]["answers"] == {"1": {"label": "A", "note": None}}
    assert pairs(client)["pairs_done"] == 1


def test_answers_survive_a_restart(media_root: Path, tmp_path: Path) -> None:
    with make_client(media_root, annotations_dir=tmp_path / "ann") as c:
        post(c, pair_id="p2", segment=1, label="B")
    with make_client(media_root, annotations_dir=tmp_path / "ann") as c:
        assert pairs(c)["pairs"][1]["answers"] == {"1": {"label": "B", "note": None}}


def test_default_annotations_dir_is_under_the_media_root(tmp_path: Path) -> None:
    root = tmp_path / "media"
    write_media_root(root)
    with make_client(root) as c:
        post(c, segment=1, label="B")
    assert (root / ".annotations" / "manifest.answers.jsonl").is_file()


def test_store_concurrent_appends_keep_every_line(tmp_path: Path) -> None:
    store = AnnotationStore(tmp_path)

    def worker(w: int) -> None:
        for i in range(25):
            store.append("m", Answer("p", i, ["A", "B", "tie"][w % 3], f"ann{w}", note="é" * 300))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = store.log_path("m").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 200 and all(json.loads(line)["pair_id"] == "p" for line in lines)
    assert len(store.answers("m", "ann3")) == 25


def test_store_survives_a_truncated_last_line(tmp_path: Path) -> None:
    store = AnnotationStore(tmp_path)
    store.append("m", Answer("p", 0, "A", "a"))
    with store.log_path("m").open("a", encoding="utf-8") as fh:
        fh.write('{"pair_id": "p", "segment": 1, "lab')  # a writer killed mid-line
    store.append("m", Answer("p", 2, "B", "a"))
    assert {k: v.label for k, v in store.answers("m", "a").items()} == {("p", 0): "A", ("p", 2): "B"}


def test_manifest_key() -> None:
    assert manifest_key("manifest.jsonl") == "manifest"
    assert manifest_key("sets/a/pairs.jsonl") == "sets%2Fa%2Fpairs"


# --------------------------------------------------------------------------- export


def test_export_writes_valid_human_records_of_finished_pairs(client: TestClient, media_root: Path) -> None:
    clicks = {("p1", 0): "A", ("p1", 1): "tie", ("p1", 2): "B", ("p2", 0): "B"}
    for (pid, seg), label in clicks.items():
        post(client, pair_id=pid, segment=seg, label=label, note="smear" if seg == 1 else None)
    post(client, pair_id="p1", segment=2, label="A")  # changed their mind
    clicks[("p1", 2)] = "A"
    r = client.post("/annotations/export", json={"manifest": "manifest.jsonl", "annotator": "ann1"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["records"] == 1 and out["written"] == ["p1"]
    assert out["incomplete"] == [{"pair_id": "p2", "answered": 1, "segments": 2}]
    path = client.app.state.annotation_store.export_path("manifest", "ann1")
    assert out["path"] == str(path) and path.name == "manifest.ann1.human.jsonl"

    [rec] = read_records(path, tolerate_truncated_tail=False)
    assert rec.pair_id == "p1" and rec.prompt == "prompt of p1"
    # relative, as the manifest wrote them, but to the export's own folder: the trainer reads it as is
    for side, name in ((rec.video_a, "clips/p1_a.mp4"), (rec.video_b, "clips/p1_b.mp4")):
        assert not Path(side).is_absolute() and side.endswith(name)
        assert (path.parent / side).resolve() == (media_root / name).resolve()
    assert rec.meta == {"k": 0} and rec.fps == FPS and rec.num_frames == 60
    assert rec.labeler.judge == "human" and rec.labeler.annotator == "ann1"
    assert rec.labels == ["A", "tie", "A"]
    assert [(s.p_a, s.p_b, s.p_tie) for s in rec.segments] == [(1, 0, 0), (0, 0, 1), (1, 0, 0)]
    assert [s.note for s in rec.segments] == [None, "smear", None]
    assert (rec.video_label, rec.video_score) == ("A", round(2 / 3, 6))

    download = client.get("/annotations/export", params={"manifest": "manifest.jsonl", "annotator": "ann1"})
    assert download.status_code == 200 and download.content == path.read_bytes()
    assert "manifest.ann1.human.jsonl" in download.headers["content-disposition"]
    missing = client.get("/annotations/export", params={"manifest": "manifest.jsonl", "annotator": "nobody"})
    assert missing.status_code == 404 and "annotator" in missing.json()["error"]["message"]


def test_export_joins_the_judges_records_for_agreement(client: TestClient, media_root: Path) -> None:
    for pid, n_segments in SEGMENTS.items():
        for seg in range(n_segments):
            post(client, pair_id=pid, segment=seg, label="AB"[seg % 2])
    out = client.post("/annotations/export", json={"manifest": "manifest.jsonl", "annotator": "ann1"}).json()
    assert out["records"] == 2
    human = read_records(client.app.state.annotation_store.export_path("manifest", "ann1"))
    engine = client.app.state.service.engine
    entries = [e for e in iter_manifest(media_root / "manifest.jsonl") if getattr(e, "pair_id", "") in PAIRS]
    pred = [asyncio.run(engine.label_pair(e)) for e in entries]
    join = compute_agreement(pred, [human], bootstrap=0)["join"]
    assert join["n_pairs_joined"] == 2 and join["n_segments_joined"] == 5
    assert join["n_boundary_mismatches"] == 0 and join["segment_count_mismatches"] == []


# --------------------------------------------------------------------------- /media


def test_media_full_and_range_requests(client: TestClient, media_root: Path) -> None:
    data = (media_root / "clips/p1_a.mp4").read_bytes()
    full = client.get("/media/clips/p1_a.mp4")
    assert full.status_code == 200 and full.content == data
    assert full.headers["content-type"] == "video/mp4" and full.headers["accept-ranges"] == "bytes"
    part = client.get("/media/clips/p1_a.mp4", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    tail = client.get("/media/clips/p1_a.mp4", headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == data[-50:]
    open_end = client.get("/media/clips/p1_a.mp4", headers={"Range": f"bytes={len(data) - 10}-"})
    assert open_end.status_code == 206 and open_end.content == data[-10:]
    past = client.get("/media/clips/p1_a.mp4", headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"
    assert past.json()["error"]["type"] == "RangeNotSatisfiable"
    head = client.head("/media/clips/p1_a.mp4", headers={"Range": "bytes=0-9"})
    assert head.status_code == 206 and head.headers["content-length"] == "10"


def test_media_content_type_of_webm(client: TestClient, media_root: Path) -> None:
    (media_root / "clip.webm").write_bytes(b"\x1a\x45\xdf\xa3" + b"0" * 20)
    assert client.get("/media/clip.webm").headers["content-type"] == "video/webm"


def test_media_path_rules(client: TestClient, media_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"TOP-SECRET-BYTES")
    link = media_root / "escape.mp4"
    if not link.is_symlink():
        link.symlink_to(outside)
    for url, status in [
        ("/media/%2e%2e/secret.mp4", 400),  # '..' (encoded: clients normalise a literal one away)
        ("/media/clips/%2e%2e/%2e%2e/secret.mp4", 400),
        ("/media//etc/passwd", 400),  # absolute
        ("/media/http://example.com/x.mp4", 400),  # a URL is never fetched
        ("/media/escape.mp4", 403),  # symlink out of the root
        ("/media/clips", 400),  # a folder
        ("/media/clips/none.mp4", 404),
    ]:
        r = client.get(url)
        assert r.status_code == status, (url, r.text)
        assert r.json()["error"]["message"].startswith("path:")
        assert b"TOP-SECRET-BYTES" not in r.content


# --------------------------------------------------------------------------- auth


def test_auth_covers_page_api_and_media(media_root: Path, tmp_path: Path) -> None:
    with make_client(media_root, token=TOKEN, annotations_dir=tmp_path / "ann") as c:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        # The page: 401 without; ?token= is traded once for a session cookie and a redirect to
        # the same URL without the token (so it leaves the address bar, history and access log).
        assert c.get("/annotate", params={"manifest": "manifest.jsonl"}).status_code == 401
        wrong = c.get("/annotate", params={"manifest": "manifest.jsonl", "token": "nope"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        first = c.get(
            "/annotate",
            params={"manifest": "manifest.jsonl", "blind": "1", "token": TOKEN},
            follow_redirects=False,
        )
        assert (
            first.status_code == 303
            and first.headers["location"] == "/annotate?manifest=manifest.jsonl&blind=1"
        )
        cookie = first.headers["set-cookie"]
        assert (
            "HttpOnly" in cookie
            and "SameSite=strict" in cookie
            and "Path=/" in cookie
            and TOKEN not in cookie
        )
        assert first.headers["referrer-policy"] == "no-referrer"
        page = c.get(first.headers["location"])  # the cookie lets the page and its reloads in
        assert page.status_code == 200 and "<title>densepref" in page.text
        params = {"manifest": "manifest.jsonl", "annotator": "ann1"}
        assert c.get("/annotate/api/pairs", params=params).status_code == 200  # and the page's API calls
        assert c.get("/media/clips/p1_a.mp4").status_code == 200
        c.cookies.clear()
        assert c.get("/annotate", params={"manifest": "manifest.jsonl"}, headers=bearer).status_code == 200
        assert c.get("/annotate/static/annotate.js").status_code == 200  # the package's own script
        c.cookies.set("densepref_session", "forged")
        assert c.get("/annotate", params={"manifest": "manifest.jsonl"}).status_code == 401
        c.cookies.clear()

        # The API without a session: the bearer header.
        assert c.get("/annotate/api/pairs", params=params).status_code == 401
        assert post(c).status_code == 401
        assert (
            c.post("/annotations/export", json={"manifest": "manifest.jsonl", "annotator": "a"}).status_code
            == 401
        )
        assert c.get("/annotations/export", params=params).status_code == 401
        r = c.get("/annotate/api/pairs", params=params, headers=bearer)
        assert r.status_code == 200
        assert (
            c.post(
                "/annotations",
                headers=bearer,
                json={
                    "manifest": "manifest.jsonl",
                    "pair_id": "p1",
                    "segment": 0,
                    "label": "A",
                    "annotator": "ann1",
                },
            ).status_code
            == 200
        )

        # /media: bearer, or the signed URL the API handed out (for this path, until it expires).
        signed = r.json()["pairs"][0]["videos"]["A"]
        assert signed.startswith("/media/clips/p1_a.mp4?exp=") and TOKEN not in signed
        assert c.get("/media/clips/p1_a.mp4").status_code == 401
        assert c.get("/media/clips/p1_a.mp4", headers=bearer).status_code == 200
        assert c.get(signed).status_code == 200
        assert c.get(signed, headers={"Range": "bytes=0-9"}).status_code == 206
        assert c.get(signed.replace("p1_a", "p1_b")).status_code == 401  # signed for another file
        assert c.get(signed[:-4] + "0000").status_code == 401  # tampered
        expired = media_url("clips/p1_a.mp4", TOKEN, now=time.time() - SIGNED_URL_SECONDS - 5)
        assert c.get(expired).status_code == 401
        other_key = media_url("clips/p1_a.mp4", "another-token")
        assert c.get(other_key).status_code == 401


def test_page_and_static_files(client: TestClient) -> None:
    page = client.get("/annotate", params={"manifest": "manifest.jsonl"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for name, kind in [
        ("annotate.js", "text/javascript"),
        ("annotate_api.js", "text/javascript"),
        ("synced_player.js", "text/javascript"),
        ("annotate.css", "text/css"),
    ]:
        r = client.get(f"/annotate/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and len(r.content) > 1000
    assert client.get("/annotate/static/annotate.html").status_code == 404
    assert client.get("/annotate/static/..%2fannotate.py").status_code == 404
    missing = client.get("/annotate")
    assert missing.status_code == 422 and "manifest" in missing.json()["error"]["message"]


def test_long_manifest_names_get_hashed_keys_and_answers_are_kept(tmp_path: Path) -> None:
    """~30 CJK characters made every save 500 ("File name too long") before keys were shortened."""
    long_name = "\u4e2d" * 30 + ".jsonl"
    other = "\u4e2d" * 30 + "x.jsonl"
    assert manifest_key(long_name) != manifest_key(other)
    assert len(manifest_key(long_name)) <= 120 and manifest_key("manifest.jsonl") == "manifest"
    write_media_root(tmp_path)
    (tmp_path / long_name).write_bytes((tmp_path / "manifest.jsonl").read_bytes())
    with make_client(tmp_path, annotations_dir=tmp_path / "ann") as c:
        r = post(c, manifest=long_name, annotator="\u4e2d" * 64)
        assert r.status_code == 200, r.text
        got = c.get("/annotate/api/pairs", params={"manifest": long_name, "annotator": "\u4e2d" * 64}).json()
        assert sum(len(p["answers"]) for p in got["pairs"]) == 1
    store = AnnotationStore(tmp_path / "ann")
    assert len(store.export_path(manifest_key(long_name), "\u4e2d" * 64).name.encode()) <= 255


def test_hostile_manifest_lines_are_problems_not_a_failed_manifest(tmp_path: Path) -> None:
    """A Latin-1 line, a lone surrogate, a 5000-digit integer: each a listed problem, the rest served."""
    manifest = write_media_root(tmp_path)
    good = manifest.read_bytes()
    bad = [
        b'{"pair_id":"latin","prompt":"caf\xe9","video_a":"clips/p1_a.mp4","video_b":"clips/p1_b.mp4"}',
        b'{"pair_id":"sur","prompt":"\\ud800","video_a":"clips/p1_a.mp4","video_b":"clips/p1_b.mp4"}',
        b'{"pair_id":"big","prompt":"p","video_a":"clips/p1_a.mp4","video_b":"clips/p1_b.mp4","meta":{"n":'
        + b"9" * 5000
        + b"}}",
    ]
    manifest.write_bytes(good + b"\n".join(bad) + b"\n")
    with make_client(tmp_path, annotations_dir=tmp_path / "ann") as c:
        r = c.get("/annotate/api/pairs", params={"manifest": "manifest.jsonl"})
        assert r.status_code == 200, r.text
        data = r.json()
    assert sorted(p["pair_id"] for p in data["pairs"]) == ["p1", "p2"]
    types = sorted(p["type"] for p in data["problems"])
    assert types.count("ManifestEncodingError") == 2 and "ManifestJSONError" in types
