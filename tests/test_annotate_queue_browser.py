"""The review queue's page controls in a real headless Chromium against the real service: the
least-confident order from a judge's labels, judge pre-annotations hidden until asked for, the
reference video beside A and B, the rubric, auto-advance, and an export with nothing done refused.
Same browser requirements as test_annotate_browser.py (skipped without Chromium and playwright)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labeler.media.video import write_video
from labeler.service.annotate.queue import RUBRIC
from tests import test_annotate_browser as base
from tests.conftest import textured_frames
from tests.service_helpers import ServiceProcess, running_service
from tests.test_annotate_browser import (
    FPS,
    TOKEN,
    current_segment,
    press,
    set_annotator,
    wait_ready,
    write_webm,
)

# The browser test's fixtures (one Chromium per module, a fresh context per test).
browser, container, page = base.browser, base.container, base.page

pytestmark = [pytest.mark.browser, pytest.mark.slow]
MANIFEST = "queue.jsonl"


def _judge_line(pair_id: str, probs: list[tuple[float, float, float]]) -> str:
    n = len(probs)
    segments = [
        {
            "index": i,
            "start_frame": 24 * i,
            "end_frame": 24 * (i + 1),
            "start_s": float(i),
            "end_s": float(i + 1),
            "label": ("A", "B", "tie")[max(range(3), key=lambda k: p[k])],
            "p_a": p[0],
            "p_b": p[1],
            "p_tie": p[2],
        }
        for i, p in enumerate(probs)
    ]
    record = {"pair_id": pair_id, "prompt": "x", "video_a": "a", "video_b": "b", "fps": FPS}
    record |= {"num_frames": 24 * n, "segments": segments, "video_label": "tie", "video_score": 0.0}
    return json.dumps({**record, "labeler": {"judge": "metrics"}}) + "\n"


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory, container: str) -> Path:
    """q1 (the judge is sure) then q2 (unsure, with a reference video) in the manifest."""
    root = tmp_path_factory.mktemp("queue-media")
    (root / "clips").mkdir()
    rows = []
    for k, pid in enumerate(("q1", "q2")):
        for side, seed in (("a", 10 * k), ("b", 10 * k + 1), ("ref", 10 * k + 2)):
            frames = textured_frames(48, h=96, w=128, seed=seed)
            path = root / "clips" / f"{pid}_{side}.{container}"
            write_video(path, frames, FPS, crf=23) if container == "mp4" else write_webm(path, frames, FPS)
        row = {"pair_id": pid, "prompt": f"prompt {pid}", "video_a": f"clips/{pid}_a.{container}"}
        row["video_b"] = f"clips/{pid}_b.{container}"
        if pid == "q2":
            row["reference"] = f"clips/{pid}_ref.{container}"
        rows.append(row)
    (root / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "judge.jsonl").write_text(
        _judge_line("q1", [(0.9, 0.05, 0.05), (0.8, 0.1, 0.1)])
        + _judge_line("q2", [(0.2, 0.7, 0.1), (0.4, 0.3, 0.3)])
    )
    return root


@pytest.fixture(scope="module")
def service(media_root: Path) -> Iterator[ServiceProcess]:
    args = ["--media-root", str(media_root), "--judge", "metrics", "--no-cache"]
    with running_service(args, token=TOKEN) as svc:
        yield svc


def open_queue(page: Any, service: ServiceProcess, query: str) -> None:
    page.goto(f"{service.base_url}/annotate?manifest={MANIFEST}&{query}&token={TOKEN}")


def test_queue_controls(page: Any, service: ServiceProcess) -> None:
    open_queue(page, service, "")
    set_annotator(page, "dora")
    wait_ready(page, "Pair 1 / 2")
    assert page.text_content("#pair-id") == "q1"
    assert page.is_hidden("#order") and page.is_hidden("#ref-figure")  # no labels, no reference
    assert page.text_content("#rubric-text") == RUBRIC

    # An export before any pair is finished is refused with a message, not an empty file.
    page.click("#export-btn")
    page.wait_for_function(
        """() => document.querySelector("#message").textContent.includes("Export failed")"""
    )
    assert "not finished any pair" in page.text_content("#message")
    assert page.get_attribute("#export-btn", "data-path") is None

    # Least confident first: q2 leads, with its reference beside A and B; judge labels stay hidden.
    open_queue(page, service, "labels=judge.jsonl&order=least-confident")
    wait_ready(page, "Pair 1 / 2")
    assert page.text_content("#pair-id") == "q2"
    assert page.is_visible("#order") and page.input_value("#order") == "least-confident"
    assert page.is_visible("#ref-figure") and "q2_ref." in page.get_attribute("#video-ref", "src")
    assert page.is_hidden("#judge-hint")

    # Asking for the judge's labels reloads the page with them; the hint names its label.
    page.check("#preannotate-toggle")
    page.wait_for_url("**preannotations=1**")
    wait_ready(page, "Pair 1 / 2")
    page.wait_for_selector("#judge-hint:not([hidden])")
    assert page.get_attribute("#judge-hint", "data-label") == "B" and "B better" in page.text_content(
        "#judge-hint"
    )

    # Auto-advance: an answer moves on to the next segment; without it the page stays.
    press(page, "1")
    assert current_segment(page) == 0
    page.check("#auto-advance")
    press(page, "2")
    page.wait_for_function("""() => document.querySelector(".seg.current").dataset.index === "1" """)
    assert current_segment(page) == 1
