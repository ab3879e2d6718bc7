"""The decoded frames the engine judges: each video of a window read once, the videos of a pair in
parallel, and the frames of a video that several pairs share (a reference, a candidate compared
with several others) decoded once for all of them.

Sharing is by content: the key is the video's content hash, the frame numbers and ``max_side``, so
two paths to the same bytes share and a rewritten file never does. Frames are shared while a pair
still holds them or while they are being decoded (no memory beyond what the pairs in flight hold),
and kept after that in a small memo, ``EngineConfig.frame_memo_mib``, for videos that more than one
pair has read (one after the other, or at the same time) and for references from their first read:
a reference is the ground truth that every generation for its prompt is compared with, so usually
read by several pairs, and not always while the first still holds it. A pair's own candidates never
take the memo's room unless another pair reads them too. Shared arrays are read-only.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict

import numpy as np

from labeler.engine_types import EngineConfig, EngineStats, PairPlan, SegmentPlan
from labeler.media import video

__all__ = ["FrameSource"]

_Key = tuple[str, tuple[int, ...], int | None]
#: Content hashes remembered as "read by a pair" (to admit a video to the memo at its second read).
_SEEN_LIMIT = 100_000


def import_readers() -> None:
    """Import the video reader (PyAV) now, in the thread that builds the engine. Its first import
    inside two decode threads at once can fail one of them with ``_DeadlockError: deadlock detected
    by _ModuleLock('av.video.reformatter')`` (#24: 6 of 10 fresh runs under load)."""
    import av  # noqa: F401


class FrameSource:
    def __init__(self, config: EngineConfig, stats: EngineStats):
        import_readers()
        self.config, self.stats = config, stats
        self._decodes = asyncio.Semaphore(config.decode_workers)  # videos decoding at once
        self._decoding: dict[_Key, asyncio.Future[np.ndarray]] = {}
        self._in_use: weakref.WeakValueDictionary[_Key, np.ndarray] = weakref.WeakValueDictionary()
        self._memo: OrderedDict[_Key, np.ndarray] = OrderedDict()  # least recently used first
        self._memo_bytes = 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._joined: set[_Key] = set()  # decodes in flight that more than one pair waits for

    async def segments(self, plan: PairPlan, missing: list[SegmentPlan]) -> dict[int, tuple]:
        """Frames (A, B, reference or None) of the given segments. A segment's frames are views of
        the window's arrays (its rows are consecutive in the window), not copies."""
        wanted = sorted({i for seg in missing for i in seg.frame_indices})
        entry = plan.entry
        videos = [("a", entry.video_a), ("b", entry.video_b)]
        if plan.use_reference and entry.reference is not None:
            videos.append(("ref", entry.reference))
        results = await asyncio.gather(
            *(
                self.frames(path, plan.content.get(role, ""), wanted, reference=role == "ref")
                for role, path in videos
            ),
            return_exceptions=True,
        )
        arrays = []
        for result in results:  # every read finished; the first failure is the pair's
            if isinstance(result, BaseException):
                raise result
            arrays.append(result)
        row = {frame: k for k, frame in enumerate(wanted)}
        out = {}
        for seg in missing:
            rows = [row[i] for i in seg.frame_indices]
            consecutive = rows == list(range(rows[0], rows[0] + len(rows)))
            pick: slice | list[int] = slice(rows[0], rows[0] + len(rows)) if consecutive else rows
            frames = [a[pick] for a in arrays]
            out[seg.index] = (frames[0], frames[1], frames[2] if len(frames) > 2 else None)
        return out

    async def frames(
        self, path: str, digest: str, wanted: list[int], *, reference: bool = False
    ) -> np.ndarray:
        """The frames ``wanted`` of one video (content hash ``digest``; "" shares nothing), resized
        to ``max_side``, read-only. A ``reference`` is kept from its first read (see the module
        doc)."""
        if not digest:
            return await self._decode(path, wanted)
        key: _Key = (digest, tuple(wanted), self.config.max_side)
        found = self._in_use.get(key)
        if found is None and key in self._memo:
            self._memo.move_to_end(key)
            found = self._memo[key]
        if found is not None:
            self.stats.shared_decodes += 1
            if key not in self._memo:  # another pair reads what one still holds: keep it for later ones
                self._keep(key, found)
            return found
        task = self._decoding.get(key)
        if task is None:
            task = asyncio.ensure_future(self._decode(path, wanted))
            self._decoding[key] = task
            task.add_done_callback(lambda done: self._finished(key, done, reference))
        else:
            self.stats.shared_decodes += 1
            self._joined.add(key)  # a second pair waits for this decode: keep what it gives
        return await asyncio.shield(task)

    def _finished(self, key: _Key, task: asyncio.Future[np.ndarray], reference: bool) -> None:
        del self._decoding[key]
        joined = key in self._joined
        self._joined.discard(key)
        if task.cancelled() or task.exception() is not None:  # exception(): marked as retrieved
            return
        frames = task.result()
        self._in_use[key] = frames
        digest = key[0]
        if reference or joined or digest in self._seen:  # read by another pair before, now or likely
            self._keep(key, frames)
        self._seen[digest] = None
        self._seen.move_to_end(digest)
        if len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)

    def _keep(self, key: _Key, frames: np.ndarray) -> None:
        """Memo ``frames``, dropping the least recently used until it fits ``frame_memo_mib``."""
        limit = self.config.frame_memo_mib * 2**20
        if frames.nbytes > limit:
            return
        self._memo[key] = frames
        self._memo_bytes += frames.nbytes
        while self._memo_bytes > limit:
            _, dropped = self._memo.popitem(last=False)
            self._memo_bytes -= dropped.nbytes

    async def _decode(self, path: str, wanted: list[int]) -> np.ndarray:
        async with self._decodes:
            t0 = time.perf_counter()
            frames = await asyncio.to_thread(video.read_frames, path, wanted, self.config.max_side)
            self.stats.decode_seconds += time.perf_counter() - t0
        frames.flags.writeable = False  # shared between pairs: no judge may change what another sees
        return frames
