"""The embedded default judge: model-free, deterministic, milliseconds per segment pair.

It measures each side of a segment with generic quality signals (labeler.judges.metrics_signals)
and turns their *differences* into one score ``S`` (positive: the first-shown video is better):

- no-reference frame quality: detail on the edges both sides share, grain in the flat areas, an
  8-pixel coding-block grid;
- temporal consistency: brightness flicker between frames, frames that stall while the other side
  moves;
- full-reference fidelity, when the request carries the ground-truth frames and ``use_reference``:
  luma SSIM and RGB MSE against the reference.

Every signal is a (floored) log-ratio between the two sides, so it is relative to the other side
and to the reference, never an absolute threshold tuned to one kind of artifact. Detail, grain and
flicker are pooled over the frame *and* per region, so a local artifact counts too. Swapping A and
B flips every signal's sign exactly: ``score(swapped) == score(request).swapped()``.
``|S| <= tie_margin`` is a tie; probabilities come from a softmax over (A, B, tie) logits placed so
that the label is always the most probable outcome.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from labeler.judges import metrics_signals as sig
from labeler.judges.base import Judge
from labeler.schemas import FatalJudgeError, FramesTooSmallError, Judgment, SegmentRequest

__all__ = ["DEFAULT_WEIGHTS", "MetricsJudge"]

#: How much each family of signals counts; pass any of these as keyword arguments to re-weight.
DEFAULT_WEIGHTS: dict[str, float] = {
    "detail": 1.0,  # log-ratio of edge sharpness
    "grain": 1.0,  # log-ratio of flat-area noise
    "blocks": 1.0,  # log-ratio of 8x8 grid strength
    "flicker": 1.0,  # log-ratio of brightness instability
    "stall": 1.0,  # share of frame steps that repeat a frame
    "fidelity": 1.0,  # log-ratios of SSIM error and MSE against the reference
}
# Floors soften the log-ratios: differences at this level (grey levels, SSIM error) are codec noise
# or invisible, not quality.
_GRAIN_FLOOR = 2.0  # noise sigma, grey levels
_GRID_FLOOR = 2.0  # grid step excess, grey levels
_FLICKER_FLOOR = 1.0  # grey levels
_SSIM_FLOOR = 0.02  # 1 - SSIM
_MSE_FLOOR = 20.0  # about 35 dB PSNR
_SMOOTHING_RATIO = 0.5  # detail gap / grain gap at which a grain gap counts as pure smoothing
_DETAIL_SCALE = 2.0  # a 1.65x sharpness ratio -> one unit of evidence
_STALL_SCALE = 3.0  # every frame step stalled -> three units
_MIN_SIDE = 16  # smallest frame side (pixels) the measures make sense for
_CLIP = 3.0  # caps each signal, so one runaway measure cannot drown all the others
_CONFIDENCE = 3.0  # logit gap between tie and A/B at S = 0, and between the label and tie at S = 2m


@dataclass(frozen=True)
class _Evidence:
    signal: str
    value: float  # contribution to S: positive favours the first-shown video
    text: str  # "what was measured (first vs second)"


def _clip(x: float) -> float:
    # Odd by construction (sign * min(|x|, c)), so swapping the sides negates it exactly.
    return math.copysign(min(abs(x), _CLIP), x) if x else 0.0


def _psnr(mse: float) -> float:
    return 10.0 * math.log10(255.0**2 / mse) if mse > 0 else float("inf")


def _log_ratio(a: float, b: float, floor: float = 0.0) -> float:
    # A difference of logs (not the log of a quotient) is exactly antisymmetric under a <-> b.
    return math.log(a + floor) - math.log(b + floor) if (a + floor) > 0 and (b + floor) > 0 else 0.0


def _log_ratios(a: sig.Pooled, b: sig.Pooled, floor: float) -> tuple[float, np.ndarray]:
    """Frame-wide and per-region log-ratios of a pooled measure (NaN where a region is empty)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        regions = np.log(a.regions + floor) - np.log(b.regions + floor)
    regions[~np.isfinite(regions)] = np.nan
    return _log_ratio(a.overall, b.overall, floor), regions


def _frame_and_worst_region(overall: float, regions: np.ndarray) -> tuple[float, int | None]:
    """Half the frame-wide log-ratio plus half the most extreme per-region one: a local artifact
    counts about as much as one spread over the frame. Also returns that region (None if none)."""
    valid = np.flatnonzero(~np.isnan(regions))
    if len(valid) == 0:
        return overall, None
    pick = int(valid[np.argmax(np.abs(regions[valid]))])  # |x| ties resolve alike in both orders
    return 0.5 * (overall + float(regions[pick])), pick


def _unexplained_by_smoothing(grain_lr: np.ndarray | float, detail_lr: np.ndarray | float) -> np.ndarray:
    """The part of a grain log-ratio that a detail log-ratio of the same sign does not explain.

    Smoothing (blur, smear, heavy compression) lowers fine texture and sensor noise along with edge
    detail, so the smoothed side measures as *less grainy*; that is no merit. When the side with
    less grain also has less detail, the grain gap is discounted in proportion (fully once the
    detail gap is ``_SMOOTHING_RATIO`` of it). Added noise raises grain with hardly any detail
    change and keeps almost all of its weight.
    """
    g, d = np.asarray(grain_lr, dtype=float), np.asarray(detail_lr, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        explained = np.where(g * d > 0, np.minimum(d / g / _SMOOTHING_RATIO, 1.0), 0.0)
    return g * (1.0 - explained)


_ROWS = ("top", "upper-middle", "lower-middle", "bottom")
_COLS = ("left", "centre-left", "centre-right", "right")


def _pooled_text(a: sig.Pooled, b: sig.Pooled, region: int | None) -> str:
    text = f"{a.overall:.1f} vs {b.overall:.1f}"
    if region is not None and sig.REGIONS == 4:
        where = f"{_ROWS[region // 4]} {_COLS[region % 4]}"
        text += f"; {where} region {a.regions[region]:.1f} vs {b.regions[region]:.1f}"
    return text


class MetricsJudge(Judge):
    """Model-free judge from image-quality and temporal-consistency signals (see module doc).

    Args:
        tie_margin: |score| at or below which a segment is a tie. The score sums per-signal
            log-ratios (0.3 is about a 35 % gap in one measure, or a 16 % gap in edge detail);
            the default separates re-encoding differences (ties) from visible artifacts.
        use_reference: compare each side with ``request.reference`` when the request carries it.
        **weights: re-weight signal families, keys from ``DEFAULT_WEIGHTS``
            (detail, grain, blocks, flicker, stall, fidelity); 0 turns a family off.
    """

    name = "metrics"
    model = "metrics-v1"

    def __init__(self, tie_margin: float = 0.3, use_reference: bool = True, **weights: float):
        if isinstance(tie_margin, bool) or not (
            isinstance(tie_margin, int | float) and tie_margin > 0 and math.isfinite(tie_margin)
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
        self.tie_margin = float(tie_margin)
        self.uses_reference = bool(use_reference)
        self.weights = {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in weights.items()}}

    def fingerprint(self) -> dict[str, Any]:
        return {
            "judge": self.name,
            "model": self.model,
            "tie_margin": self.tie_margin,
            "use_reference": self.uses_reference,
            "weights": dict(sorted(self.weights.items())),
        }

    async def judge(self, request: SegmentRequest) -> Judgment:
        # numpy releases the GIL in the heavy parts; a thread keeps the event loop responsive.
        return await asyncio.to_thread(self.score, request)

    # ------------------------------------------------------------------ scoring

    def score(self, request: SegmentRequest) -> Judgment:
        """Judge one segment synchronously (the work behind ``judge``)."""
        evidence = self._evidence(request)
        total = sum(e.value for e in evidence)
        p_a, p_b, p_tie = self._probabilities(total)
        label = "A" if total > self.tie_margin else "B" if total < -self.tie_margin else "tie"
        raw = json.dumps(
            {"score": round(total, 6), "signals": {e.signal: round(e.value, 6) for e in evidence}},
            sort_keys=True,
        )
        return Judgment(
            label=label,
            p_a=p_a,
            p_b=p_b,
            p_tie=p_tie,
            rationale=self._rationale(label, total, evidence),
            raw=raw,
            model=self.model,
            prob_source="score",
        )

    def _probabilities(self, total: float) -> tuple[float, float, float]:
        gamma = _CONFIDENCE / self.tie_margin
        # Logits (A, B, tie) = (g(S - m), g(-S - m), 0): A wins exactly when S > m, and A/B mirror.
        logit_a, logit_b = gamma * (total - self.tie_margin), gamma * (-total - self.tie_margin)
        top = max(logit_a, logit_b, 0.0)
        e_a, e_b, e_t = math.exp(logit_a - top), math.exp(logit_b - top), math.exp(-top)
        z = e_a + e_b + e_t
        return e_a / z, e_b / z, e_t / z

    def _reference_for(self, request: SegmentRequest) -> np.ndarray | None:
        ref = request.reference
        if ref is None or not self.uses_reference:
            return None
        shape = request.frames_first.shape
        if ref.ndim != 4 or ref.shape[-1] != 3:
            raise FatalJudgeError(f"metrics judge: reference frames must be [K, H, W, 3], got {ref.shape}")
        if ref.shape[1:3] != shape[1:3]:
            (rh, rw), (h, w) = ref.shape[1:3], shape[1:3]
            if abs(rw / rh - w / h) > 0.02 * (w / h):
                raise FatalJudgeError(
                    f"metrics judge: reference frames are {rw}x{rh}, the pair {w}x{h}: aspect ratios differ"
                )
            from PIL import Image

            ref = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in ref])
        return np.ascontiguousarray(ref, dtype=np.uint8)

    def _evidence(self, request: SegmentRequest) -> list[_Evidence]:
        a, b = request.frames_first, request.frames_second
        if min(a.shape[1:3]) < _MIN_SIDE:
            raise FramesTooSmallError(
                f"metrics judge: frames of {a.shape[2]}x{a.shape[1]} px are too small to measure "
                f"(need at least {_MIN_SIDE} px a side)"
            )
        ref = self._reference_for(request)
        w = self.weights
        y_a, y_b = sig.luma(a), sig.luma(b)
        h_a, h_b = sig.half(y_a), sig.half(y_b)
        maps = sig.shared_maps(h_a, h_b)
        out: list[_Evidence] = []

        def add(signal: str, value: float, text: str) -> None:
            if w[signal]:
                out.append(_Evidence(signal, w[signal] * _clip(value), text))

        s_a, s_b = sig.sharpness(y_a, maps), sig.sharpness(y_b, maps)
        detail_overall, detail_regions = _log_ratios(s_a, s_b, 0.0)
        detail, region = _frame_and_worst_region(detail_overall, detail_regions)
        add("detail", _DETAIL_SCALE * detail, f"less edge detail (gradient {_pooled_text(s_a, s_b, region)})")
        n_a, n_b = sig.grain(y_a, maps), sig.grain(y_b, maps)
        grain_overall, grain_regions = _log_ratios(n_a, n_b, _GRAIN_FLOOR)
        # Did the less grainy side lose edge contrast too (smoothing), or the grainier side gain
        # noise? Edge contrast is noise-blind; regions without edge samples use the frame-wide gap.
        contrast_overall, contrast_regions = _log_ratios(
            sig.edge_contrast(y_a, maps), sig.edge_contrast(y_b, maps), 0.0
        )
        local_contrast = np.where(np.isnan(contrast_regions), contrast_overall, contrast_regions)
        noise, region = _frame_and_worst_region(
            float(_unexplained_by_smoothing(grain_overall, contrast_overall)),
            _unexplained_by_smoothing(grain_regions, local_contrast),
        )
        add("grain", -noise, f"more grain (noise sigma {_pooled_text(n_a, n_b, region)})")
        g_a, g_b = sig.grid_strength(y_a), sig.grid_strength(y_b)
        add(
            "blocks",
            -_log_ratio(g_a, g_b, _GRID_FLOOR),
            f"stronger blockiness (8x8 grid energy {g_a:.2f} vs {g_b:.2f})",
        )

        if len(a) >= 2:
            m_a, m_b = sig.motion(h_a), sig.motion(h_b)
            held_a, held_b = sig.held_steps(m_a, m_b), sig.held_steps(m_b, m_a)
            n_a_held, n_b_held, n_steps = int(held_a.sum()), int(held_b.sum()), len(m_a)
            add(
                "stall",
                -_STALL_SCALE * (n_a_held - n_b_held) / n_steps,
                f"held/frozen frames ({n_a_held} vs {n_b_held} of {n_steps} frame steps repeat)",
            )
            if len(a) >= 3:
                # Compare steadiness only over frame triples where both sides move: a side that
                # stopped would otherwise look perfectly steady next to real motion.
                moving = ~(held_a | held_b)
                keep = moving[:-1] & moving[1:]
                f_a, f_b = sig.flicker(h_a, keep), sig.flicker(h_b, keep)
                jitter, region = _frame_and_worst_region(*_log_ratios(f_a, f_b, _FLICKER_FLOOR))
                add("flicker", -jitter, f"more flicker (brightness jitter {_pooled_text(f_a, f_b, region)})")

        if ref is not None:
            h_r = sig.half(sig.luma(ref))
            q_a, q_b = sig.block_ssim(h_r, h_a, h_b)
            e_a, e_b = 1.0 - q_a, 1.0 - q_b
            mse_a, mse_b = sig.mse(a, ref), sig.mse(b, ref)
            # Half structural (luma SSIM), half per-pixel (RGB MSE, so colour errors count).
            fidelity = -0.5 * (_log_ratio(e_a, e_b, _SSIM_FLOOR) + _log_ratio(mse_a, mse_b, _MSE_FLOOR))
            add(
                "fidelity",
                fidelity,
                f"lower fidelity to the reference (SSIM {1 - e_a:.3f} vs {1 - e_b:.3f}, "
                f"PSNR {_psnr(mse_a):.1f} vs {_psnr(mse_b):.1f} dB)",
            )
        return out

    def _rationale(self, label: str, total: float, evidence: list[_Evidence]) -> str:
        if not evidence:
            return "tie: every signal is switched off"
        if label == "tie":
            top = max(evidence, key=lambda e: abs(e.value))
            return (
                f"tie: no clear difference (score {total:+.2f} within margin {self.tie_margin:.2f}; "
                f"largest signal {top.signal} {top.value:+.2f})"
            )
        sign = 1.0 if label == "A" else -1.0
        top = max(evidence, key=lambda e: sign * e.value)
        loser = "B" if label == "A" else "A"
        return f"{label}: {loser} shows {top.text} [first vs second; score {total:+.2f}]"
