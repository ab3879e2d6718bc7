"""Same-site request forgery (#24): a page on another port of the same host can make a user's
browser send the annotation session cookie with a form post (``text/plain``). The cookie opens only
the annotation page's API and media; labeling, /metrics and the API documents need the bearer
header, and state-changing bodies must be declared JSON."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.test_annotate_api import TOKEN, make_client, write_media_root


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    write_media_root(root)
    return root


@pytest.fixture
def with_session(root: Path, tmp_path: Path) -> TestClient:
    with make_client(root, token=TOKEN, annotations_dir=tmp_path / "ann") as c:
        first = c.get(
            "/annotate", params={"manifest": "manifest.jsonl", "token": TOKEN}, follow_redirects=False
        )
        assert first.status_code == 303 and "densepref_session" in c.cookies
        yield c


LABEL_BODY = '{"prompt": "p", "video_a": "clips/p1_a.mp4", "video_b": "clips/p1_b.mp4"}'


def test_the_session_cookie_does_not_open_labeling_metrics_or_the_api_documents(
    with_session: TestClient,
) -> None:
    c = with_session
    assert c.get("/annotate/api/pairs", params={"manifest": "manifest.jsonl"}).status_code == 200
    assert c.get("/media/clips/p1_a.mp4").status_code == 200
    for path in ("/metrics", "/openapi.json", "/docs", "/readyz"):
        assert c.get(path).status_code == 401, path
    json_headers = {"content-type": "application/json"}
    assert c.post("/label", content=LABEL_BODY, headers=json_headers).status_code == 401
    assert c.post("/label/batch", content="[]", headers=json_headers).status_code == 401


def test_a_text_plain_form_post_is_refused_even_with_the_token(root: Path, tmp_path: Path) -> None:
    with make_client(root, token=TOKEN, annotations_dir=tmp_path / "ann") as c:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for path, body in (("/label", LABEL_BODY), ("/label/batch", "[]")):
            r = c.post(path, content=body, headers={**bearer, "content-type": "text/plain"})
            assert r.status_code == 415, r.text
            assert r.json()["error"]["type"] == "UnsupportedMediaType"
        ok = c.post(
            "/label",
            content=LABEL_BODY,
            headers={**bearer, "content-type": "application/json; charset=utf-8"},
        )
        assert ok.status_code == 200, ok.text


def test_annotation_posts_need_a_json_body(with_session: TestClient) -> None:
    c = with_session
    answer = (
        '{"manifest": "manifest.jsonl", "pair_id": "p1", "segment": 0, "label": "A", "annotator": "ann1"}'
    )
    forged = c.post("/annotations", content=answer, headers={"content-type": "text/plain"})
    assert forged.status_code == 415
    pairs = c.get("/annotate/api/pairs", params={"manifest": "manifest.jsonl", "annotator": "ann1"}).json()
    assert all(p["answers"] == {} for p in pairs["pairs"])  # nothing was saved
    assert (
        c.post("/annotations", content=answer, headers={"content-type": "application/json"}).status_code
        == 200
    )
    export = '{"manifest": "manifest.jsonl", "annotator": "ann1"}'
    assert (
        c.post("/annotations/export", content=export, headers={"content-type": "text/plain"}).status_code
        == 415
    )


def test_the_pairs_api_is_never_cached_and_documents_its_errors(root: Path, tmp_path: Path) -> None:
    with make_client(root, token=TOKEN, annotations_dir=tmp_path / "ann") as c:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        r = c.get("/annotate/api/pairs", params={"manifest": "manifest.jsonl"}, headers=bearer)
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        spec = c.get("/openapi.json", headers=bearer).json()
    for path, method in (
        ("/annotate/api/pairs", "get"),
        ("/annotations", "post"),
        ("/annotations/export", "post"),
    ):
        documented = set(spec["paths"][path][method]["responses"])
        assert {"400", "404"} <= documented, (path, documented)
    assert "415" in spec["paths"]["/label"]["post"]["responses"]
