"""The serving logic behind the routes of ``labeler.app``: admission, the request limits, the
engine, and the error table. Routes only parse bodies and call these methods."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from labeler.engine import Engine
from labeler.media import video
from labeler.schemas import DensePreferenceRecord, ManifestEntry
from labeler.service.body import BodyCounts, BodyParser
from labeler.service.errors import ServiceError, service_error
from labeler.service.inline import decode_inline_frames, read_inline_headers
from labeler.service.limits import Admission, PixelBudget
from labeler.service.models import CascadeOptions, LabelBatchRequest, LabelByPathRequest, LabelInlineRequest
from labeler.service.paths import private_paths, probe_media, require_media_root, resolve_media_path
from labeler.service.settings import ServiceSettings

__all__ = ["READY_TIMEOUT_S", "LabelService"]

log = logging.getLogger("labeler.app")
READY_TIMEOUT_S = 5.0
T = TypeVar("T")


class LabelService:
    """Admission, validation under the limits, the engine; every failure through the error table."""

    def __init__(self, settings: ServiceSettings, engine: Engine):
        self.settings = settings
        self.engine = engine
        self.admission = Admission(settings.max_queue, settings.retry_after_seconds)
        self.pixels = PixelBudget(settings.max_inflight_pixels, self.admission)
        self.bodies = BodyParser(
            BodyCounts(
                settings.max_segments,
                settings.max_frames_per_segment,
                min(settings.max_batch_pairs, settings.max_queue),
            )
        )
        #: Cheap judges' engines of cascade requests, by judge name, built on first use.
        self.cheap_engines: dict[str, Engine] = {}
        #: Label jobs running now (the tasks the service cancels at the end of a shutdown's grace).
        self.jobs: set[asyncio.Task[Any]] = set()

    # -------------------------------------------------------------- by path

    def _probe(self, path: str) -> video.VideoInfo:
        # The engine's probe, remembered per file identity: a repeated request opens no video.
        return self.engine.video_meta(path)[0]

    def _entry(self, req: LabelByPathRequest) -> tuple[ManifestEntry, Callable[[str], str], int]:
        """Resolve and probe the paths of a request (blocking: call in a thread); with the entry
        come the rewriter that shows server paths as the client gave them, and the pixels the
        job will hold decoded."""
        root = require_media_root(self.settings.media_root, "video_a")
        given = {"video_a": req.video_a, "video_b": req.video_b}
        if req.reference is not None:
            given["reference"] = req.reference
        real = {name: resolve_media_path(root, rel, field=name) for name, rel in given.items()}
        private = private_paths(root, {real[name]: given[name] for name in given})
        infos = {
            name: probe_media(
                p, field=name, max_seconds=self.settings.max_video_seconds, probe=self._probe, private=private
            )
            for name, p in real.items()
        }
        n_segments = self._check_segments(
            infos["video_a"], req.segment_seconds or self.engine.config.segment_seconds
        )
        entry = ManifestEntry(
            pair_id=req.effective_pair_id(),
            prompt=req.prompt,
            video_a=str(real["video_a"]),
            video_b=str(real["video_b"]),
            reference=str(real["reference"]) if "reference" in real else None,
            segment_seconds=req.segment_seconds,
            align_to_latent=req.align_to_latent,
        )
        return entry, private, self._decoded_pixels(infos["video_a"], n_segments, len(real))

    def _decoded_pixels(self, info: video.VideoInfo, n_segments: int, n_videos: int) -> int:
        """Pixels a by-path job holds decoded at most: every segment's frames of every video,
        resized to the engine's --max-side (400 when one job alone could never fit the budget)."""
        config = self.engine.config
        width, height = video.fit_max_side(info.width, info.height, config.max_side) or (
            info.width,
            info.height,
        )
        frame = width * height
        pixels = n_segments * config.frames_per_segment * n_videos * frame
        if pixels > self.settings.max_inflight_pixels:
            raise ServiceError(
                400,
                "TooManyPixels",
                f"video_a: {n_segments} segments of {config.frames_per_segment} frames of {n_videos} videos "
                f"decode to {pixels} pixels, over the limit of {self.settings.max_inflight_pixels}",
            )
        return pixels

    def _check_segments(self, info: video.VideoInfo, seconds: float) -> int:
        n_segments = len(video.plan_segments(info.num_frames, info.fps, seconds))
        if n_segments > self.settings.max_segments:
            raise ServiceError(
                400,
                "TooManySegments",
                f"segment_seconds: {seconds:g} s cuts a {info.duration:.1f} s video into {n_segments} "
                f"segments, over the limit of {self.settings.max_segments}",
            )
        return n_segments

    async def _label_path_admitted(self, req: LabelByPathRequest) -> DensePreferenceRecord:
        entry, private, pixels = await asyncio.to_thread(self._entry, req)
        with self.pixels.hold(pixels):
            labeling = (
                self.engine.label_pair(entry) if req.cascade is None else self._cascade(entry, req.cascade)
            )
            record = await _translated(labeling, private)
        # Echo the caller's relative paths: absolute server paths stay private.
        return record.model_copy(
            update={"video_a": req.video_a, "video_b": req.video_b, "reference": req.reference}
        )

    def _cascade(self, entry: ManifestEntry, options: CascadeOptions) -> Awaitable[DensePreferenceRecord]:
        """The pair through a cascade from ``options.cheap_judge`` (its engine built on first use)."""
        from labeler.cascade.options import cheap_engine
        from labeler.cascade.policy import EscalationRule
        from labeler.cascade.runner import label_pair_cascade

        if self.engine.judge.name == options.cheap_judge:
            raise ServiceError(
                400,
                "CascadeUnsupported",
                f"cascade: the service's judge is {options.cheap_judge} already; nothing to escalate to",
            )
        cheap = self.cheap_engines.get(options.cheap_judge)
        if cheap is None:
            cheap = self.cheap_engines[options.cheap_judge] = cheap_engine(
                self.engine, options.cheap_judge, processes=0
            )
        rule = EscalationRule(share=options.escalate_share, below=options.escalate_below)
        return label_pair_cascade(entry, cheap, self.engine, rule)

    async def label_by_path(self, req: LabelByPathRequest) -> DensePreferenceRecord:
        with self.admission.slot():
            return await self._label_path_admitted(req)

    # -------------------------------------------------------------- inline

    async def label_inline(self, req: LabelInlineRequest) -> DensePreferenceRecord:
        """Label inline frames; their decoded pixels count against the budget of all admitted
        jobs until this one ends."""
        with self.admission.slot():
            blobs, pixels = await asyncio.to_thread(read_inline_headers, req, self.settings)
            with self.pixels.hold(pixels):
                segments = await asyncio.to_thread(decode_inline_frames, req, blobs, self.settings)
                labeling = self.engine.label_frames(req.prompt, segments, pair_id=req.pair_id or "inline")
                return await _translated(labeling, private_paths(None))

    # -------------------------------------------------------------- batch

    async def _batch_line(self, req: LabelByPathRequest) -> dict[str, Any]:
        try:
            record = await self._label_path_admitted(req)
        except ServiceError as exc:  # one pair's failure must not cut the stream of the others
            return batch_error_line(req.effective_pair_id(), exc)
        except Exception:
            log.exception("batch pair %s failed unexpectedly", req.effective_pair_id())
            return batch_error_line(
                req.effective_pair_id(), ServiceError(500, "InternalError", "internal error")
            )
        return record.model_dump(mode="json")

    def check_batch_size(self, n_pairs: int) -> None:
        require_media_root(self.settings.media_root, "pairs")
        limit = min(self.settings.max_batch_pairs, self.settings.max_queue)
        if n_pairs > limit:
            raise ServiceError(400, "TooManyPairs", f"pairs: {n_pairs} over the limit of {limit} per batch")

    def start_batch(self, batch: LabelBatchRequest) -> list[tuple[str, asyncio.Task[dict[str, Any]]]]:
        """Admit all pairs at once (or none: 503), then label them concurrently; each pair frees
        its slot when done, so a client that goes away cannot leak capacity."""
        self.check_batch_size(len(batch.pairs))
        self.admission.acquire(len(batch.pairs))
        tasks = [(p.effective_pair_id(), asyncio.create_task(self._batch_line(p))) for p in batch.pairs]
        for _, task in tasks:  # a done callback runs even for a task cancelled before it started
            self.jobs.add(task)
            task.add_done_callback(self._batch_pair_done)
        return tasks

    def _batch_pair_done(self, task: asyncio.Task[Any]) -> None:
        self.jobs.discard(task)
        self.admission.release()

    # -------------------------------------------------------------- readiness

    async def ready(self) -> tuple[bool, str | None]:
        if self.admission.closing:
            return False, "shutting down"
        try:
            ok = await asyncio.wait_for(self.engine.judge.ready(), READY_TIMEOUT_S)
        except asyncio.TimeoutError:
            return False, f"the judge did not answer within {READY_TIMEOUT_S:g} s"
        except Exception as exc:  # a failing readiness probe means "not ready", never a 500
            return False, f"readiness check failed: {exc}"
        return bool(ok), None if ok else "the judge endpoint is not reachable"


async def _translated(labeling: Awaitable[T], private: Callable[[str], str]) -> T:
    """Await the engine; its failures become the error table's answer."""
    try:
        return await labeling
    except Exception as exc:
        raise service_error(exc, private) from None


def batch_error_line(pair_id: str, exc: ServiceError) -> dict[str, Any]:
    """The NDJSON line of a pair that failed: the status it would have had on POST /label."""
    return {
        "pair_id": pair_id,
        "status": exc.status_code,
        "error": {"type": exc.error_type, "message": exc.message},
    }
