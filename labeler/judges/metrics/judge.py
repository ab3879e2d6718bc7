"""The embedded default judge: model-free, deterministic, milliseconds per segment pair.

It measures generic quality signals of both sides of a segment (labeler.judges.metrics.features:
frame quality pooled over the frame and per region, region-by-region and over-time comparisons of
A with B, and with the reference when there is one) as *gaps between the sides*, and sums them
into one score ``S`` (positive: the first-shown video is better):

    S = sum over signals of  coefficient[signal] * weight[family] * gap[signal]

The coefficients are fitted (benchmarks/judge_quality.py ``--fit``) by maximum likelihood on the
tuning part of the generation-like set plus a clear-copy demo set, separately for judging with and
without a reference: they make ``S`` a log-odds (up to the temperature), and each signal's share of it. The
probabilities are a softmax over the logits ``t * (S - m, -S - m, 0)`` for (A, B, tie), so
``|S| <= m`` is a tie and the label is always the most probable outcome; the tie margin ``m`` is
fitted with them, on "different but equal" pairs among others, and the temperature ``t`` after
them, so the probabilities are calibrated. docs/metrics_judge.md has the principles and
the measured results.

Every gap flips its sign when A and B swap: ``score(swapped) == score(request).swapped()``.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from labeler.judges.base import Judge
from labeler.judges.metrics.features import FAMILIES, Evidence, measure
from labeler.judges.metrics.transport import (
    NAME_PREFIX,
    SHM_DIR,
    SharedFrames,
    SharedSlots,
    call_with_frames,
    shareable,
)
from labeler.judges.metrics.worker import set_up_worker
from labeler.schemas import (
    FatalJudgeError,
    FramesTooSmallError,
    InputError,
    JudgeError,
    Judgment,
    Label,
    Order,
    SegmentRequest,
    TransientJudgeError,
)

__all__ = ["COEFFICIENTS", "DEFAULT_WEIGHTS", "TEMPERATURES", "TIE_MARGINS", "MetricsJudge"]

#: User multipliers per family of signals (``MetricsJudge(roughness=0.5)``); 0 turns one off.
DEFAULT_WEIGHTS: dict[str, float] = dict.fromkeys(sorted(set(FAMILIES.values())), 1.0)

#: Fitted coefficients per mode ("reference": the request carries a reference and the judge uses
#: it; "no_reference": otherwise). Written by ``python -m benchmarks.judge_quality --fit``.
COEFFICIENTS: dict[str, dict[str, float]] = {
    "no_reference": {
        "detail": 5.1,
        "contrast": 3.15,
        "grain": 2.939,
        "blocks": 3.667,
        "blocks_local": 1.429,
        "flicker": 3.629,
        "stall": 1.146,
        "roughness_frame": 1.233,
        "roughness_local": 3.129,
        "roughness_peak": 0.624,
        "reversal_peak": 4.508,
        "reversal_mean": 3.317,
        "held_region": 3.884,
        "motion_local": 1.891,
        "fidelity": 0.0,
        "fidelity_frame": 0.0,
        "fidelity_local": 0.0,
        "fidelity_peak": 0.0,
    },
    "reference": {
        "detail": 0.424,
        "contrast": 0.033,
        "grain": 0.4,
        "blocks": 0.328,
        "blocks_local": 0.687,
        "flicker": 0.673,
        "stall": 0.0,
        "roughness_frame": 0.187,
        "roughness_local": 1.058,
        "roughness_peak": 0.299,
        "reversal_peak": 0.797,
        "reversal_mean": 0.743,
        "held_region": 0.0,
        "motion_local": 0.289,
        "fidelity": 0.865,
        "fidelity_frame": 1.535,
        "fidelity_local": 1.595,
        "fidelity_peak": 1.789,
    },
}
#: Fitted tie margins per mode (same units as ``S``).
TIE_MARGINS: dict[str, float] = {"no_reference": 2.789, "reference": 3.384}
#: Fitted temperatures per mode: the probabilities are the softmax of ``t * (S - m, -S - m, 0)``.
#: The tie weight in the fit buys tie recall with over-confident answers; ``t`` (fitted afterwards
#: on the tune part, without that weight) undoes the over-confidence and changes no label.
TEMPERATURES: dict[str, float] = {"no_reference": 0.36, "reference": 0.413}
_MIN_SIDE = 16  # smallest frame side (pixels) the measures make sense for
#: Worker pools replaced in a row, without an answer in between, before the judge gives up on them.
MAX_POOL_RESTARTS = 3


class MetricsJudge(Judge):
    """Model-free judge from image-quality and temporal-consistency signals (see module doc).

    Args:
        tie_margin: |S| at or below which a segment is a tie; None (default) uses the margin
            fitted for the mode (``TIE_MARGINS``). ``t * (|S| - m)`` is the log-odds of the winner
            against a tie (``t`` from ``TEMPERATURES``).
        use_reference: compare each side with ``request.reference`` when the request carries it.
        processes: measure segments in this many worker processes (0, the default: in threads of
            this process). The measures are many short numpy steps that hold the GIL between them,
            so threads use about 1.5 of 2 cores; processes use them all, for about a second to
            start and a copy of the frames per segment in shared memory (at most two segments'
            per worker at a time: labeler.judges.metrics.transport). Answers are the same either
            way. A worker that dies costs only the attempts in flight (``_replace_broken``).
        **weights: re-weight signal families, keys from ``DEFAULT_WEIGHTS``; 0 turns one off.
    """

    name = "metrics"
    model = "metrics-v3"

    def __init__(
        self,
        tie_margin: float | None = None,
        use_reference: bool = True,
        processes: int = 0,
        **weights: float,
    ):
        if tie_margin is not None and (
            isinstance(tie_margin, bool)
            or not (isinstance(tie_margin, int | float) and tie_margin > 0 and math.isfinite(tie_margin))
        ):
            raise ValueError(f"metrics judge: tie_margin must be a positive number, got {tie_margin!r}")
        unknown = sorted(set(weights) - set(DEFAULT_WEIGHTS))
        if unknown:
            raise ValueError(
                f"metrics judge: unknown weight(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_WEIGHTS)}"
            )
        for key, value in weights.items():
            if isinstance(value, bool) or not (
                isinstance(value, int | float) and value >= 0 and math.isfinite(value)
            ):
                raise ValueError(f"metrics judge: weight {key}={value!r} must be a finite number >= 0")
        if isinstance(processes, bool) or not isinstance(processes, int) or not 0 <= processes <= 256:
            raise ValueError(f"metrics judge: processes must be an integer in 0..256, got {processes!r}")
        self.tie_margin = None if tie_margin is None else float(tie_margin)
        self.uses_reference = bool(use_reference)
        self.weights = {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in weights.items()}}
        self.processes = processes
        # What a worker needs to build the same judge (``_score_in_worker``).
        self._settings = (self.tie_margin, self.uses_reference, tuple(sorted(self.weights.items())))
        self._pool: ProcessPoolExecutor | None = None
        self._warming: list[Future[None]] = []
        self._restarts = 0  # worker pools replaced since the last answer (see ``_replace_broken``)
        self._broken: str | None = None  # why the judge gave up on its workers
        if processes:
            self._start_pool()
        # Judgments being computed, by segment_key, with the order they were asked in (see
        # ``judge``); entries leave when done.
        self._in_flight: dict[str, tuple[asyncio.Future[Judgment], Order]] = {}
        # Shared memory for the frames sent to the workers (labeler.judges.metrics.transport):
        # two blocks per worker, one being measured and one queued, so a worker never waits.
        self._shared = SharedSlots(2 * max(processes, 1))
        self._turns: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def fingerprint(self) -> dict[str, Any]:
        return {
            "judge": self.name,
            "model": self.model,
            "tie_margin": self.tie_margin,
            "use_reference": self.uses_reference,
            "weights": dict(sorted(self.weights.items())),
        }

    async def judge(self, request: SegmentRequest) -> Judgment:
        """``score`` in a worker thread (numpy releases the GIL in the heavy parts, and the event
        loop stays responsive). The engine asks for both orders of a segment at once (the Judge
        contract, labeler.judges.base); since the score mirrors exactly under a swap, a request
        whose ``segment_key`` is already being measured waits for that measurement and returns it
        (swapped when its ``order`` differs) instead of measuring everything again (half the work
        per segment). A request without a ``segment_key`` is measured on its own."""
        key = request.segment_key
        if key is None:
            return await self._measure(request)
        entry = self._in_flight.get(key)
        if entry is None:
            entry = (asyncio.ensure_future(self._measure(request)), request.order)
            self._in_flight[key] = entry
            entry[0].add_done_callback(lambda _: self._in_flight.pop(key, None))
        answer = await asyncio.shield(entry[0])
        return answer if entry[1] == request.order else answer.swapped()

    async def _measure(self, request: SegmentRequest) -> Judgment:
        if not self.processes:
            return await asyncio.to_thread(self.score, request)
        self._live_pool()  # fail before taking a shared block
        arrays = (
            request.frames_first,
            request.frames_second,
            request.reference if self.uses_reference else None,
        )
        if not shareable(arrays):  # a reference of Python objects: pickled, as it was given
            return await self._in_pool(_score_in_worker, self._settings, *arrays)
        async with self._slot_turns(asyncio.get_running_loop()):
            with self._shared.lend(arrays) as frames:
                if frames is None:  # no room in shared memory: pickled through the pipe
                    return await self._in_pool(_score_in_worker, self._settings, *arrays)
                return await self._in_pool(_score_shared_in_worker, self._settings, frames)

    def _live_pool(self) -> ProcessPoolExecutor:
        """The worker pool, or the error that says why there is none."""
        if self._broken is not None:
            raise FatalJudgeError(self._broken)
        if self._pool is None:
            raise RuntimeError("metrics judge: used after aclose()")
        return self._pool

    def _start_pool(self) -> None:
        # Start the workers now: each spends about a second importing numpy and scipy, which
        # then overlaps with probing and decoding instead of delaying the first answer.
        # The workers end with this process, and remove its blocks, if it dies without aclose().
        self._pool = ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=set_up_worker,
            initargs=(os.getpid(), os.path.join(SHM_DIR, f"{NAME_PREFIX}{os.getpid()}_*")),
        )
        self._warming = [self._pool.submit(_warm_up) for _ in range(self.processes)]

    async def _in_pool(self, fn: Any, *args: Any) -> Judgment:
        """``fn(*args)`` in a worker process; a dead worker becomes a judge error (see
        ``_replace_broken``), never a pool that fails every later segment. The pool is looked up
        again here: a request that waited for a shared block may find it replaced, or gone."""
        pool = self._live_pool()
        try:
            judgment: Judgment = await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool as exc:
            raise self._replace_broken(pool) from exc
        self._restarts = 0
        return judgment

    def _replace_broken(self, pool: ProcessPoolExecutor) -> JudgeError:
        """A worker process died (killed, out of memory), which breaks its whole pool: every
        request in flight fails with it. The first of them to get here starts a fresh pool and
        each gets a ``TransientJudgeError``, so the engine retries them in the new workers. After
        ``MAX_POOL_RESTARTS`` replacements without an answer in between (a segment that kills
        every worker, a machine that cannot start them) the judge gives up: every later request
        is a ``FatalJudgeError``, so a run stops after a few pairs instead of failing them all."""
        if self._pool is pool and self._broken is None:
            pool.shutdown(wait=False, cancel_futures=True)
            self._restarts += 1
            if self._restarts > MAX_POOL_RESTARTS:
                self._pool = None
                self._broken = (
                    f"metrics judge: its worker processes died {self._restarts} times in a row without "
                    "an answer (killed, or out of memory); rerun, with --judge-processes 0 to measure "
                    "in threads of the calling process"
                )
            else:
                self._start_pool()
        if self._broken is not None:
            return FatalJudgeError(self._broken)
        return TransientJudgeError(
            "metrics judge: a worker process died while measuring (killed, or out of memory); "
            "the workers were restarted"
        )

    def _slot_turns(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        """Requests wait here for one of the shared blocks (for the running event loop)."""
        if self._turns is None or self._turns[0] is not loop:
            self._turns = (loop, asyncio.Semaphore(self._shared.count))
        return self._turns[1]

    async def ready(self) -> bool:
        """False while worker processes are still starting (they answer once started)."""
        return all(f.done() for f in self._warming)

    async def aclose(self) -> None:
        """Stop the worker processes (if any were started)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        self._shared.close()

    # ------------------------------------------------------------------ scoring

    def margin_for(self, with_reference: bool) -> float:
        """The tie margin used for a request judged with (or without) a reference."""
        if self.tie_margin is not None:
            return self.tie_margin
        return TIE_MARGINS["reference" if with_reference else "no_reference"]

    def score(self, request: SegmentRequest) -> Judgment:
        """Judge one segment synchronously (the work behind ``judge``)."""
        return self.score_frames(request.frames_first, request.frames_second, request.reference)

    def score_frames(self, first: np.ndarray, second: np.ndarray, reference: np.ndarray | None) -> Judgment:
        """``score`` of a request showing these frames (as validated by ``SegmentRequest``)."""
        ref = self._reference_for(first.shape, reference)
        evidence = self._evidence(first, second, ref)
        total = sum(e.value for e in evidence)
        margin = self.margin_for(ref is not None)
        p_a, p_b, p_tie = _probabilities(
            total, margin, TEMPERATURES["reference" if ref is not None else "no_reference"]
        )
        label: Label = "A" if total > margin else "B" if total < -margin else "tie"
        raw = json.dumps(
            {"score": round(total, 6), "signals": {e.signal: round(e.value, 6) for e in evidence}},
            sort_keys=True,
        )
        return Judgment(
            label=label,
            p_a=p_a,
            p_b=p_b,
            p_tie=p_tie,
            rationale=self._rationale(label, total, margin, evidence),
            raw=raw,
            model=self.model,
            prob_source="score",
        )

    def _reference_for(self, shape: tuple[int, ...], ref: np.ndarray | None) -> np.ndarray | None:
        if ref is None or not self.uses_reference:
            return None
        if ref.ndim != 4 or ref.shape[-1] != 3:
            raise InputError(f"metrics judge: reference frames must be [K, H, W, 3], got {ref.shape}")
        if len(ref) != shape[0]:
            raise InputError(f"metrics judge: {len(ref)} reference frames for {shape[0]} frames a side")
        if ref.shape[1:3] != shape[1:3]:
            (rh, rw), (h, w) = ref.shape[1:3], shape[1:3]
            if abs(rw / rh - w / h) > 0.02 * (w / h):
                raise InputError(
                    f"metrics judge: reference frames are {rw}x{rh}, the pair {w}x{h}: aspect ratios differ"
                )
            from PIL import Image

            ref = np.stack(
                [np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR)) for f in ref]
            )
        return np.ascontiguousarray(ref, dtype=np.uint8)

    def _evidence(self, a: np.ndarray, b: np.ndarray, ref: np.ndarray | None) -> list[Evidence]:
        """Each signal's contribution to ``S`` (coefficient x family weight x measured gap);
        signals whose contribution is switched off are left out."""
        if min(a.shape[1:3]) < _MIN_SIDE:
            raise FramesTooSmallError(
                f"metrics judge: frames of {a.shape[2]}x{a.shape[1]} px are too small to measure "
                f"(need at least {_MIN_SIDE} px a side)"
            )
        coefficients = COEFFICIENTS["reference" if ref is not None else "no_reference"]
        out = []
        for e in measure(a, b, ref):
            factor = coefficients[e.signal] * self.weights[FAMILIES[e.signal]]
            if factor:
                out.append(Evidence(e.signal, factor * e.value, e.text))
        return out

    def _rationale(self, label: str, total: float, margin: float, evidence: list[Evidence]) -> str:
        if not evidence:
            return "tie: every signal is switched off"
        if label == "tie":
            top = max(evidence, key=lambda e: abs(e.value))
            return (
                f"tie: no clear difference (score {total:+.2f} within margin {margin:.2f}; "
                f"largest signal {top.signal} {top.value:+.2f})"
            )
        sign = 1.0 if label == "A" else -1.0
        top = max(evidence, key=lambda e: sign * e.value)
        loser = "B" if label == "A" else "A"
        return f"{label}: {loser} shows {top.text} [first vs second; score {total:+.2f}]"


_WORKER_JUDGES: dict[tuple[Any, ...], MetricsJudge] = {}


def _warm_up() -> None:
    """Nothing: unpickling this function imports the measures in a fresh worker ("spawn": a new
    interpreter, safe whatever threads the parent runs)."""


def _worker_judge(settings: tuple[Any, ...]) -> MetricsJudge:
    """The judge of a worker process for ``settings``, built once per process."""
    judge = _WORKER_JUDGES.get(settings)
    if judge is None:
        tie_margin, use_reference, weights = settings
        judge = _WORKER_JUDGES[settings] = MetricsJudge(tie_margin, use_reference, **dict(weights))
    return judge


def _score_shared_in_worker(settings: tuple[Any, ...], frames: SharedFrames) -> Judgment:
    """``score_frames`` in a worker process, on the frames in shared memory."""
    return call_with_frames(frames, _worker_judge(settings).score_frames)


def _score_in_worker(
    settings: tuple[Any, ...], first: np.ndarray, second: np.ndarray, reference: np.ndarray | None
) -> Judgment:
    """``score_frames`` in a worker process, on frames that came pickled."""
    return _worker_judge(settings).score_frames(first, second, reference)


def _probabilities(total: float, margin: float, temperature: float) -> tuple[float, float, float]:
    # Logits (A, B, tie) = t * (S - m, -S - m, 0): A wins exactly when S > m whatever t > 0 is,
    # and A/B mirror.
    logit_a, logit_b = temperature * (total - margin), temperature * (-total - margin)
    top = max(logit_a, logit_b, 0.0)
    e_a, e_b, e_t = math.exp(logit_a - top), math.exp(logit_b - top), math.exp(-top)
    z = e_a + e_b + e_t
    return e_a / z, e_b / z, e_t / z
