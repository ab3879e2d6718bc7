"""The labeling engine (docs/design.md §2.5): one code path for the batch CLI and the HTTP service.

For a pair it probes both videos, cuts aligned segments, looks every (segment, order) judgment up
in the cache, decodes only the frames of segments still missing (in worker threads, so decoding
overlaps with requests in flight), asks the judge in both presentation orders under a bounded
number of concurrent requests with retries, and folds the votes into a dense preference record.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from labeler import __version__
from labeler.aggregate import combine_votes
from labeler.cache import JudgmentCache, cache_key
from labeler.engine_types import (
    BudgetExceeded,
    EngineConfig,
    EngineStats,
    FrameSegment,
    PairPlan,
    PendingRequest,
    SegmentPlan,
)
from labeler.errors import VideoError
from labeler.frame_source import FrameSource
from labeler.judges.base import Judge
from labeler.ledger import Ledger
from labeler.media import video
from labeler.schemas import (
    DensePreferenceRecord,
    InputError,
    Judgment,
    LabelerInfo,
    ManifestEntry,
    Order,
    Segment,
    SegmentRequest,
    TransientJudgeError,
    Usage,
)

ORDERS: tuple[Order, ...] = ("ab", "ba")
T = TypeVar("T")
__all__ = [
    "ORDERS",
    "BudgetExceeded",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "FrameSegment",
    "PairPlan",
    "PendingRequest",
    "SegmentPlan",
]


@dataclass
class _PairContext:
    """What every segment of one pair shares while it is judged."""

    prompt: str
    n_segments: int
    fps: float | None  # None for inline frames (no frame times to show)
    hits: dict[str, Judgment]  # the cached judgments found for this pair
    tally: dict[str, int] = field(
        default_factory=lambda: {"cache_hits": 0, "requests": 0, "input_tokens": 0, "output_tokens": 0}
    )


async def _gather_or_raise(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Run all to the end (no request is abandoned half-way), then raise the first failure."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


def _array_digest(frames: np.ndarray) -> str:
    h = hashlib.sha256(str(frames.shape).encode())
    h.update(np.ascontiguousarray(frames).tobytes())
    return h.hexdigest()


def _exponential_jitter(initial: float, maximum: float) -> wait_exponential_jitter:
    # tenacity 9.2 renamed `initial` to `multiplier`; accept both releases.
    params = inspect.signature(wait_exponential_jitter).parameters
    first = "multiplier" if "multiplier" in params else "initial"
    return wait_exponential_jitter(**{first: initial}, max=maximum, jitter=initial)


class Engine:
    def __init__(self, judge: Judge, config: EngineConfig | None = None, cache: JudgmentCache | None = None):
        self.judge = judge
        self.config = config or EngineConfig()
        self.cache = cache if cache is not None else JudgmentCache(None)
        self.stats = EngineStats()
        #: Requests, tokens, cost and budgets: the one account every runner and the service use.
        self.ledger = Ledger(
            self.stats,
            budget=self.config,
            price=lambda i, o, batch, cached: judge.cost_usd(i, o, batch=batch, cached_tokens=cached),
        )
        self._requests = asyncio.Semaphore(self.config.concurrency)
        self.frames = FrameSource(self.config, self.stats)
        self._pause_until = 0.0  # a 429's Retry-After pauses every request, not just the one that got it
        self._fingerprint = judge.fingerprint()
        judge.attach_meter(self.ledger)  # judges with meters_usage report each HTTP request and its tokens
        self._backoff = _exponential_jitter(self.config.backoff_initial, self.config.backoff_max)

    # ------------------------------------------------------------------ planning

    def _key(self, content: dict[str, Any], indices: Sequence[int], order: Order, prompt: str) -> str:
        return cache_key(
            judge=self.judge.name,
            model=self.judge.model,
            prompt_id=self.judge.prompt_id,
            fingerprint=self._fingerprint,
            content=content,
            indices=list(indices),
            max_side=self.config.max_side,
            order=order,
            prompt=prompt,
        )

    def _orders(self) -> tuple[Order, ...]:
        return ORDERS if self.config.swap else ORDERS[:1]

    def video_meta(self, path: str) -> tuple[video.VideoInfo, str]:
        """Probe result and content hash of a video. The hash decides (judgments are keyed by it);
        it is remembered by the file's identity (path, size, mtime, inode, ctime: see
        video.file_identity), and the probe by the hash, so a rerun over cached judgments neither
        hashes nor opens the videos again. A corrupt memo entry is a miss."""
        try:
            identity = video.file_identity(path)
        except video.VideoReadError:
            return video.probe(path), ""  # probe raises the typed error naming the file
        hashed = self.cache.get_meta(f"video-hash:{identity}")
        digest = hashed.get("sha256") if hashed else None
        if not isinstance(digest, str):
            digest = video.file_hash(path)
            self.cache.set_meta(f"video-hash:{identity}", {"sha256": digest})
        info = self._cached_info(f"video-info:{digest}", path)
        if info is None:
            info = video.probe(path)
            self.cache.set_meta(f"video-info:{digest}", asdict(info))
        return info, digest

    def content_hashes(self, entry: ManifestEntry, reference: bool) -> dict[str, str]:
        """The content hashes a record of ``entry`` keeps (``video_sha256``), from the memo when
        the files are unchanged (a stat each); ``reference``: with the reference's."""
        hashes = {"a": self.video_meta(entry.video_a)[1], "b": self.video_meta(entry.video_b)[1]}
        if reference and entry.reference is not None:
            hashes["ref"] = self.video_meta(entry.reference)[1]
        return hashes

    def _cached_info(self, key: str, path: str) -> video.VideoInfo | None:
        meta = self.cache.get_meta(key)
        try:
            return video.VideoInfo(**{**meta, "path": path}) if meta else None
        except TypeError:  # written by another version, or corrupt: probe again
            return None

    def plan_pair(self, entry: ManifestEntry) -> PairPlan:
        """Probe, check alignment, segment, and compute cache keys, without decoding a frame."""
        info_a, hash_a = self.video_meta(entry.video_a)
        info_b, hash_b = self.video_meta(entry.video_b)
        video.check_aligned(info_a, info_b, role="video_b")
        use_ref = entry.reference is not None and self.judge.uses_reference
        content = {"a": hash_a, "b": hash_b}
        if entry.reference is not None and use_ref:
            info_ref, content["ref"] = self.video_meta(entry.reference)
            video.check_aligned(info_a, info_ref, role="reference")
        segments = []
        seconds = entry.segment_seconds or self.config.segment_seconds
        align = entry.align_to_latent or self.config.align_to_latent
        for span in video.segment_spans(info_a, seconds, align_to=align):
            indices = video.sample_indices(span.start, span.end, self.config.frames_per_segment)
            keys = {o: self._key(content, indices, o, entry.prompt) for o in self._orders()}
            segments.append(
                SegmentPlan(span.index, span.start, span.end, span.start_s, span.end_s, indices, keys)
            )
        return PairPlan(entry, info_a.fps, info_a.num_frames, segments, use_ref, content)

    # ------------------------------------------------------------------ judging

    def _wait(self, retry_state: Any) -> float:
        backoff = self._backoff(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, TransientJudgeError) else None
        return max(backoff, retry_after) if retry_after else backoff

    async def _call_once(self, request: SegmentRequest) -> Judgment:
        loop = asyncio.get_running_loop()
        await self.judge.prepare(
            request
        )  # encode frames before taking a slot: slots are for requests on the wire
        while (delay := self._pause_until - loop.time()) > 0:
            await asyncio.sleep(delay)
        async with self._requests:
            if not self.judge.meters_usage:
                self.ledger.before_request()
            try:
                return await asyncio.wait_for(self.judge.judge(request), self.config.request_timeout)
            except asyncio.TimeoutError as exc:
                raise TransientJudgeError(
                    f"judge gave no answer within {self.config.request_timeout:g} s"
                ) from exc
            except TransientJudgeError as exc:
                if exc.retry_after and exc.retry_after > self.config.max_retry_after:
                    # Not honoured: a failed attempt, retried after the ordinary backoff.
                    raise TransientJudgeError(
                        f"{exc} (asked to retry after {exc.retry_after:g} s, over "
                        f"--max-retry-after {self.config.max_retry_after:g} s)",
                        status=exc.status,
                    ) from exc
                if exc.retry_after:
                    self._pause_until = max(self._pause_until, loop.time() + exc.retry_after)
                raise

    def _count_retry(self, _state: Any) -> None:
        self.stats.retries += 1

    async def ask(self, request: SegmentRequest) -> Judgment:
        """One judge call with retries on transient failures (429/5xx/timeouts), honoring Retry-After."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(TransientJudgeError),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    judgment = await self._call_once(request)
        except Exception:
            self.stats.judge_errors += 1
            raise
        if not self.judge.meters_usage:
            self.ledger.bill(judgment)
        return judgment

    @staticmethod
    def segment_request(
        prompt: str, seg: SegmentPlan, frames: tuple, order: Order, n_segments: int, fps: float | None
    ) -> SegmentRequest:
        """What the judge is shown for one segment in one order ("ba" shows B first)."""
        fa, fb, ref = frames
        first, second = (fa, fb) if order == "ab" else (fb, fa)
        times = tuple(round(i / fps, 4) for i in seg.frame_indices) if fps else ()
        return SegmentRequest(
            prompt=prompt,
            frames_first=first,
            frames_second=second,
            start_s=seg.start_s,
            end_s=seg.end_s,
            index=seg.index,
            num_segments=n_segments,
            frame_times=times,
            frame_indices=tuple(int(i) for i in seg.frame_indices),
            reference=ref,
            fps=fps,
            segment_key=seg.keys["ab"],
            order=order,
        )

    async def _judge_segment(
        self, ctx: _PairContext, seg: SegmentPlan, frames: tuple | None
    ) -> list[tuple[Order, Judgment]]:
        """Both votes of a segment (cache hits or judge calls), mapped back to A/B order."""

        async def one(order: Order) -> tuple[Order, Judgment]:
            cached = ctx.hits.get(seg.keys[order])
            if cached is not None:
                ctx.tally["cache_hits"] += 1
                self.stats.cache_hits += 1
                judgment = cached
            else:
                assert frames is not None, "a segment with a cache miss is always decoded"
                request = self.segment_request(ctx.prompt, seg, frames, order, ctx.n_segments, ctx.fps)
                judgment = await self.ask(request)
                self.cache.set(seg.keys[order], judgment)
                ctx.tally["requests"] += 1
            ctx.tally["input_tokens"] += judgment.input_tokens
            ctx.tally["output_tokens"] += judgment.output_tokens
            return order, (judgment if order == "ab" else judgment.swapped())

        return list(await _gather_or_raise(one(o) for o in self._orders()))

    async def _judge_segments(
        self, ctx: _PairContext, plans: list[SegmentPlan], frames: dict[int, tuple]
    ) -> list[list[tuple[Order, Judgment]]]:
        return list(await _gather_or_raise(self._judge_segment(ctx, s, frames.get(s.index)) for s in plans))

    def cached_judgments(self, plans: list[SegmentPlan]) -> dict[str, Judgment]:
        """The cached judgments of these segments, each key read once: what is found here is what
        the record uses, and only the segments with a miss get decoded."""
        found = {key: self.cache.get(key) for seg in plans for key in seg.keys.values()}
        return {key: judgment for key, judgment in found.items() if judgment is not None}

    async def decode_segments(self, plan: PairPlan, missing: list[SegmentPlan]) -> dict[int, tuple]:
        """Frames (A, B, reference or None) of the given segments: labeler.frame_source."""
        return await self.frames.segments(plan, missing)

    async def _windows(
        self, plan: PairPlan, hits: dict[str, Judgment], segments: list[SegmentPlan] | None = None
    ) -> AsyncIterator[tuple[list[SegmentPlan], dict[int, tuple]]]:
        """The pair's segments (or only ``segments`` of it) ``decode_window`` at a time, with the
        frames of those that miss a cached judgment: a window's frames are dropped before the next
        window is decoded, so the frames held for a pair are bounded by the settings (window x
        frames per segment x max_side), not by the video's length."""
        chosen = plan.segments if segments is None else segments
        step = max(1, self.config.decode_window)
        for k in range(0, len(chosen), step):
            window = chosen[k : k + step]
            missing = [s for s in window if any(key not in hits for key in s.keys.values())]
            yield window, (await self.decode_segments(plan, missing) if missing else {})

    # ------------------------------------------------------------------ for runners

    async def pending_requests(
        self,
        entries: Iterable[ManifestEntry],
        *,
        skipped: Callable[[ManifestEntry, Exception], None] | None = None,
    ) -> AsyncIterator[PendingRequest]:
        """Every (segment, order) request of these pairs that the cache cannot answer, once each
        (a cache key two pairs share comes once), with the request the judge would be sent.

        Frames are decoded ``decode_window`` segments at a time, as :meth:`label_pair` does, so a
        consumer that writes each request out (the Batch API runner) holds at most one window of
        frames. A pair that cannot be planned (a broken video...) goes to ``skipped`` and the
        others go on.
        """
        seen: set[str] = set()
        for entry in entries:
            try:
                plan = await asyncio.to_thread(self.plan_pair, entry)
            except (VideoError, ValueError) as exc:
                if skipped is not None:
                    skipped(entry, exc)
                continue
            hits = self.cached_judgments(plan.segments)
            async for window, frames in self._windows(plan, hits):
                for seg in window:
                    for order, key in seg.keys.items():
                        if key in hits or key in seen:
                            continue
                        seen.add(key)
                        request = self.segment_request(
                            entry.prompt, seg, frames[seg.index], order, len(plan.segments), plan.fps
                        )
                        yield PendingRequest(entry.pair_id, key, request)

    def record(self, key: str, judgment: Judgment, *, batch: bool = False) -> None:
        """A judgment obtained outside :meth:`ask` (a Batch API answer): cached under ``key`` (a
        :class:`PendingRequest`'s) and billed to the ledger (``batch``: at Batch API price)."""
        self.cache.set(key, judgment)
        self.ledger.bill(judgment, batch=batch)

    # ------------------------------------------------------------------ public

    async def label_pair(self, entry: ManifestEntry) -> DensePreferenceRecord:
        """Label one manifest pair (paths already resolved). Raises VideoError, InputError or
        JudgeError.

        Segments go through in windows of ``decode_window`` (:meth:`_windows`): a window's missing
        frames are decoded, judged and dropped before the next window is decoded.
        """
        plan = await asyncio.to_thread(self.plan_pair, entry)
        ctx, votes = await self._judge_plan(plan, plan.segments)
        seconds = entry.segment_seconds or self.config.segment_seconds
        return self._record(
            plan.segments, votes, ctx, entry, plan.fps, plan.num_frames, seconds=seconds, content=plan.content
        )

    async def label_some_segments(
        self, entry: ManifestEntry, indices: Collection[int]
    ) -> tuple[PairPlan, list[Segment], Usage]:
        """Judge only the segments of ``entry`` whose index is in ``indices`` (a cascade's escalated
        ones, labeler.cascade): the others are neither decoded nor asked about. Returns the pair's
        plan (every segment's frame range, to check against another judge's), the judged segments
        in index order, and what they cost."""
        plan = await asyncio.to_thread(self.plan_pair, entry)
        wanted = set(indices)
        unknown = wanted - {s.index for s in plan.segments}
        if unknown:
            raise InputError(f"pair {entry.pair_id} has no segment {sorted(unknown)[0]}")
        chosen = [s for s in plan.segments if s.index in wanted]
        ctx, votes = await self._judge_plan(plan, chosen)
        self.stats.segments += len(chosen)
        return plan, self._fold(chosen, votes), Usage(**ctx.tally)

    async def _judge_plan(
        self, plan: PairPlan, plans: list[SegmentPlan]
    ) -> tuple[_PairContext, list[list[tuple[Order, Judgment]]]]:
        """Judge ``plans`` (segments of ``plan``) in windows of ``decode_window``."""
        ctx = _PairContext(plan.entry.prompt, len(plan.segments), plan.fps, self.cached_judgments(plans))
        votes: list[list[tuple[Order, Judgment]]] = []
        async for window, frames in self._windows(plan, ctx.hits, plans):
            votes += await self._judge_segments(ctx, window, frames)
        return ctx, votes

    async def label_frames(
        self, prompt: str, segments: Sequence[FrameSegment], *, pair_id: str = "inline"
    ) -> DensePreferenceRecord:
        """Label segments whose frames the caller holds; the cache keys on the pixels."""
        if not segments:
            raise InputError("nothing to label: no segments")
        plans, frames, start = [], {}, 0
        for i, seg in enumerate(segments):
            fa = video.resize_max_side(
                np.ascontiguousarray(seg.frames_a, dtype=np.uint8), self.config.max_side
            )
            fb = video.resize_max_side(
                np.ascontiguousarray(seg.frames_b, dtype=np.uint8), self.config.max_side
            )
            if fa.shape != fb.shape:
                raise InputError(
                    f"segments[{i}]: frames_a {fa.shape} and frames_b {fb.shape} differ in shape"
                )
            content = {"a": _array_digest(fa), "b": _array_digest(fb)}
            indices = list(range(start, start + len(fa)))
            keys = {o: self._key(content, indices, o, prompt) for o in self._orders()}
            plans.append(SegmentPlan(i, start, start + len(fa), seg.start_s, seg.end_s, indices, keys))
            frames[i] = (fa, fb, None)
            start += len(fa)
        duration = max(segments[-1].end_s - segments[0].start_s, 1e-6)
        entry = ManifestEntry(
            pair_id=pair_id,
            prompt=prompt,
            video_a="<inline>",
            video_b="<inline>",
            reference=None,
            segment_seconds=None,
        )
        ctx = _PairContext(prompt, len(plans), None, self.cached_judgments(plans))
        votes = await self._judge_segments(ctx, plans, frames)
        return self._record(plans, votes, ctx, entry, round(start / duration, 4), start, seconds=None)

    def _record(
        self,
        plans: list[SegmentPlan],
        votes: list[list[tuple[Order, Judgment]]],
        ctx: _PairContext,
        entry: ManifestEntry,
        fps: float,
        num_frames: int,
        *,
        seconds: float | None,
        content: dict[str, str] | None = None,
    ) -> DensePreferenceRecord:
        """Fold each segment's votes into the dense preference record."""
        segments = self._fold(plans, votes)
        self.stats.pairs += 1
        self.stats.segments += len(segments)
        return DensePreferenceRecord.for_entry(
            entry,
            segments,
            fps=fps,
            num_frames=num_frames,
            labeler=self.labeler_info(seconds, entry.align_to_latent),
            usage=Usage(**ctx.tally),
            video_sha256=content,
        )

    def _fold(self, plans: list[SegmentPlan], votes: list[list[tuple[Order, Judgment]]]) -> list[Segment]:
        """Each segment's votes combined into its label and probabilities."""
        segments = []
        for seg, seg_votes in zip(plans, votes, strict=True):
            outcome = combine_votes(seg_votes, decisive_margin=self.config.decisive_margin)
            if len(seg_votes) > 1:
                self.stats.swapped_segments += 1
                self.stats.flips += outcome.consistent is False
            segments.append(
                Segment(
                    index=seg.index,
                    start_frame=seg.start_frame,
                    end_frame=seg.end_frame,
                    start_s=seg.start_s,
                    end_s=seg.end_s,
                    label=outcome.label,
                    p_a=outcome.p_a,
                    p_b=outcome.p_b,
                    p_tie=outcome.p_tie,
                    votes=outcome.votes,
                    consistent=outcome.consistent,
                    rationale=outcome.rationale,
                    note=None,
                )
            )
        return segments

    def labeler_info(self, segment_seconds: float | None, align_to_latent: int | None = None) -> LabelerInfo:
        """The ``labeler`` block of this engine's records (``segment_seconds``: None for inline frames;
        ``align_to_latent``: a pair's own, over the engine's)."""
        extra: dict[str, Any] = {"max_side": self.config.max_side}
        if self.judge.answer_order is not None:
            extra["answer_order"] = self.judge.answer_order
        if segment_seconds is not None:
            extra["segment_seconds"] = segment_seconds
        if fallbacks := self.judge.endpoint_fallbacks():
            extra["fallbacks"] = fallbacks
        if (align := align_to_latent or self.config.align_to_latent) is not None:
            extra["align_to_latent"] = align
        return LabelerInfo(
            judge=self.judge.name,
            model=self.judge.model,
            prompt_id=self.judge.prompt_id,
            frames_per_segment=self.config.frames_per_segment,
            swap=self.config.swap,
            densepref_version=__version__,
            **extra,
        )

    async def aclose(self) -> None:
        await self.judge.aclose()
        self.cache.close()
