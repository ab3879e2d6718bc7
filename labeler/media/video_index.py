"""The fastest way to the sampled frames of a video: PyAV, driven by an index of its packets.

The engine wants 8 of every 25 frames or so, and an H.264 stream must still decode the frames its
samples depend on. Not all of them, though: a frame that no other frame refers to (a non-reference
B-frame) can be dropped when it is not wanted, and the wanted frames come out bit for bit the same.
Numbering frames is what makes that safe: a frame's number is the rank of its timestamp among all
packets (display order, as decord and a plain decode count), so each packet is known to be wanted
or not *before* it is decoded, and each frame that comes out is known by its timestamp.

Measured on the generation-like set (benchmarks/decode.py): about 35% less CPU than decord's
``get_batch`` for the same frames, about half of it from the skipped frames and half from converting
to RGB with one reused converter (PyAV makes a new one per frame otherwise, which costs ~5x the
conversion itself at these sizes).

:func:`decode_wanted` raises :class:`NotIndexable` for a file it cannot number this way (packets
without timestamps, repeated timestamps, discarded or corrupt packets, no keyframe to start from);
``labeler.media.video.read_frames`` then reads it with decord, or a plain PyAV decode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from labeler.errors import NotIndexable

__all__ = ["NotIndexable", "PacketIndex", "decode_wanted"]


@dataclass(frozen=True)
class PacketIndex:
    """A video stream's packets in decode order: timestamp, frame number and keyframe flag of each."""

    pts: np.ndarray  # int64, in decode order
    frame: np.ndarray  # int64: the frame number (rank of the timestamp) of each packet
    keyframe: np.ndarray  # bool

    @classmethod
    def scan(cls, container: Any, stream: Any) -> PacketIndex:
        """Read every packet of ``stream`` (demuxing only: nothing is decoded)."""
        pts, keys = [], []
        for pkt in container.demux(stream):
            if not pkt.size:  # the demuxer's end-of-stream marker
                continue
            if pkt.pts is None or pkt.is_discard or pkt.is_corrupt:
                raise NotIndexable("a packet without a usable timestamp")
            pts.append(pkt.pts)
            keys.append(pkt.is_keyframe)
        order = np.asarray(pts, np.int64)
        if len(np.unique(order)) != len(order):
            raise NotIndexable("repeated timestamps")
        frame = np.empty(len(order), np.int64)
        frame[np.argsort(order)] = np.arange(len(order))
        return cls(order, frame, np.asarray(keys, bool))

    def __len__(self) -> int:
        return len(self.pts)

    def start(self, first: int) -> int:
        """Decode position to start at for the frames from ``first`` on: the last keyframe that shows
        at or before ``first`` and comes, in decode order, before every packet of those frames."""
        end = int(np.flatnonzero(self.frame >= first)[0]) + 1
        candidates = np.flatnonzero(self.keyframe[:end] & (self.frame[:end] <= first))
        if not len(candidates):
            raise NotIndexable(f"no keyframe at or before frame {first}")
        return int(candidates[-1])


class _SeekMissed(NotIndexable):
    """The demuxer did not resume at the keyframe asked for (byte-based seeking, as in MPEG-TS)."""


def _frames_from(
    container: Any, stream: Any, index: PacketIndex, start: int, wanted: set[int], *, seek: bool
) -> Iterator[Any]:
    """Decoded frames from the keyframe at decode position ``start`` to the end of the stream:
    seeking there (``seek``), or demuxing from the beginning and sending nothing before it.

    Each packet is decoded with ``skip_frame`` set for it: NONREF (drop it if nothing refers to it)
    unless its frame is wanted. The stream decodes on one thread, so the setting in force when a
    packet goes in is the one its frame is decoded with. Raises :class:`_SeekMissed` before decoding
    anything when the seek lands after that keyframe or on a packet the index does not know."""
    ctx = stream.codec_context
    position = {int(p): k for k, p in enumerate(index.pts)}
    if seek:
        container.seek(int(index.pts[start]), stream=stream, backward=True, any_frame=False)
    started = False
    for pkt in container.demux(stream):
        if not pkt.size:
            continue
        pos = position.get(pkt.pts, -1) if pkt.pts is not None else -1
        if not started and 0 <= pos < start:
            continue  # an earlier packet (the seek landed on an earlier keyframe): go on to ours
        if not started and pos != start:
            raise _SeekMissed if seek else NotIndexable("the keyframe to start at never came")
        if pos < 0:
            raise NotIndexable("a packet the index does not know")
        started = True
        ctx.skip_frame = "DEFAULT" if int(index.frame[pos]) in wanted else "NONREF"
        yield from ctx.decode(pkt)
    ctx.skip_frame = "DEFAULT"
    yield from ctx.decode(None)  # the frames the decoder still holds (reordering delay)


def _open_video(path: str) -> tuple[Any, Any]:
    import av

    container = av.open(path)
    if not container.streams.video:
        container.close()
        raise NotIndexable("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "NONE"  # see _frames_from; the engine decodes several videos at once
    return container, stream


def decode_wanted(path: str, wanted: list[int], put: Callable[[int, np.ndarray], None]) -> None:
    """Decode the frames numbered ``wanted`` (sorted, distinct), calling ``put(k, rgb)`` for
    ``wanted[k]`` as each one comes out of the decoder (one full-size RGB frame exists at a time).

    Raises :class:`NotIndexable` when this reader cannot do it, including frame numbers outside the
    stream (the next reader names them), and PyAV's own errors when the file cannot be opened."""
    from av.video.reformatter import VideoReformatter

    container, stream = _open_video(path)
    try:
        index = PacketIndex.scan(container, stream)
        if not (wanted and wanted[0] >= 0 and wanted[-1] < len(index)):
            raise NotIndexable("frame numbers outside the stream")
        start = index.start(wanted[0])
        row = {number: k for k, number in enumerate(wanted)}
        number_of = {int(p): int(f) for p, f in zip(index.pts, index.frame, strict=True)}
        to_rgb = VideoReformatter()  # one for every frame: PyAV's per-frame one is rebuilt each time
        left = set(wanted)
        for seek in (True, False):
            try:
                for frame in _frames_from(container, stream, index, start, set(wanted), seek=seek):
                    number = number_of.get(frame.pts) if frame.pts is not None else None
                    if number in left:
                        put(row[number], to_rgb.reformat(frame, format="rgb24").to_ndarray())
                        left.discard(number)
                        if not left:
                            return
                break
            except _SeekMissed:  # nothing decoded yet: read again from the beginning of the file
                container.close()
                container, stream = _open_video(path)
    finally:
        container.close()
    raise NotIndexable(f"frames {sorted(left)[:5]} did not come out of the decoder")
