"""What the metrics judge measures: generic quality signals of the two sides, as gaps between them.

Every signal is a (floored) log-ratio or a difference between the sides, clipped to +-3,
positive when the first-shown side looks better; swapping the sides negates every value exactly.

Frame-quality signals (labeler.judges.metrics.signals), here: edge ``detail`` (discounted by a
side's own extra noise) and noise-blind edge ``contrast``, ``grain`` in flat areas (discounted
when it is smoothing), an 8-pixel ``blocks`` grid over the frame and in its worst region
(``blocks_local``), brightness ``flicker``, frames that ``stall``, and SSIM/MSE ``fidelity`` to the
reference. Region-by-region and over-time signals (labeler.judges.metrics.regions): roughness,
reversal, held regions, local motion and local fidelity. docs/metrics_judge.md has the principles.
"""

from __future__ import annotations

import math

import numpy as np

from labeler.judges.metrics import local as loc
from labeler.judges.metrics import signals as sig
from labeler.judges.metrics.regions import Evidence, clip, held, local_excess, over_time, sticking, where

__all__ = ["FAMILIES", "Evidence", "measure"]

#: Each signal's family: the unit a user re-weights (``MetricsJudge(roughness=0.5)``).
FAMILIES: dict[str, str] = {
    "detail": "detail",
    "contrast": "detail",
    "grain": "grain",
    "blocks": "blocks",
    "blocks_local": "blocks",
    "flicker": "flicker",
    "stall": "stall",
    "roughness_frame": "roughness",
    "roughness_local": "roughness",
    "roughness_peak": "roughness",
    "reversal_peak": "reversal",
    "reversal_mean": "reversal",
    "held_region": "held",
    "motion_local": "held",
    "fidelity": "fidelity",
    "fidelity_frame": "fidelity",
    "fidelity_local": "fidelity",
    "fidelity_peak": "fidelity",
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


def _unexplained_by_noise(detail_lr: np.ndarray | float, noise_lr: np.ndarray | float) -> np.ndarray:
    """The part of a detail log-ratio (positive: A shows more gradient) that the same side's extra
    noise (``noise_lr``, positive: A grainier, beyond what smoothing explains) does not: noise
    raises the gradient at edges as it does everywhere. Reduced by the noise gap, never past 0."""
    d, n = np.asarray(detail_lr, dtype=float), np.asarray(noise_lr, dtype=float)
    with np.errstate(invalid="ignore"):
        same = d * n > 0
        return np.where(same, np.sign(d) * np.maximum(np.abs(d) - np.abs(n), 0.0), d)


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


def _pooled_text(a: sig.Pooled, b: sig.Pooled, region: int | None) -> str:
    text = f"{a.overall:.1f} vs {b.overall:.1f}"
    if region is not None and sig.REGIONS == loc.GRID:
        text += f"; {where(region)} region {a.regions[region]:.1f} vs {b.regions[region]:.1f}"
    return text


def measure(a: np.ndarray, b: np.ndarray, ref: np.ndarray | None) -> list[Evidence]:
    """Every signal for the pair ``a`` (first shown) and ``b``, reference signals when ``ref`` is
    given; all [K, H, W, 3] uint8 of one size."""
    y_a, y_b = sig.luma(a), sig.luma(b)
    h_a, h_b = sig.half(y_a), sig.half(y_b)
    h_r = None if ref is None else sig.half(sig.luma(ref))
    c_a, c_b = loc.coarse(h_a), loc.coarse(h_b)
    held_cells = held(c_a, c_b)
    stalls = _stalls(h_a, h_b)
    moving = None if stalls is None else ~(stalls[0] | stalls[1])
    out = _frame_quality(a, b, ref, y_a, y_b, h_a, h_b, h_r, held_cells, stalls, moving)
    out += over_time(h_a, h_b, c_a, c_b, h_r, held_cells, moving)
    return out


def _stalls(h_a: np.ndarray, h_b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """[K-1] bool per side: the frame steps where that side repeats a frame while the other moves
    (None for a single frame). Steadiness measures (grain over time, flicker, roughness,
    reversal) leave these steps out: a side that stopped would pass for perfectly steady."""
    if len(h_a) < 2:
        return None
    m_a, m_b = sig.motion(h_a), sig.motion(h_b)
    return sig.held_steps(m_a, m_b), sig.held_steps(m_b, m_a)


def _blocks(y_a: np.ndarray, y_b: np.ndarray) -> list[Evidence]:
    """An 8-pixel coding-block grid over the frame, and in the region where it stands out most
    beyond the median region (blocks confined to one area are diluted in the frame-wide measure)."""
    (g_a, c_a), (g_b, c_b) = sig.grid_strengths(y_a), sig.grid_strengths(y_b)
    local, cell = local_excess(np.log(c_b + _GRID_FLOOR) - np.log(c_a + _GRID_FLOOR))
    return [
        Evidence(
            "blocks",
            clip(-_log_ratio(g_a, g_b, _GRID_FLOOR)),
            f"stronger blockiness (8x8 grid energy {g_a:.2f} vs {g_b:.2f})",
        ),
        Evidence(
            "blocks_local",
            clip(local),
            f"coding blocks in one region ({where(cell)}: 8x8 grid energy {c_a[cell]:.2f} vs {c_b[cell]:.2f})",
        ),
    ]


def _frame_quality(
    a: np.ndarray,
    b: np.ndarray,
    ref: np.ndarray | None,
    y_a: np.ndarray,
    y_b: np.ndarray,
    h_a: np.ndarray,
    h_b: np.ndarray,
    h_r: np.ndarray | None,
    held_cells: tuple[np.ndarray, np.ndarray] | None,
    stalls: tuple[np.ndarray, np.ndarray] | None,
    steady: np.ndarray | None,
) -> list[Evidence]:
    """``stalls``: the frame steps each side repeats; ``steady``: those where neither does."""
    maps = sig.shared_maps(h_a, h_b)
    out: list[Evidence] = []

    def add(signal: str, value: float, text: str) -> None:
        out.append(Evidence(signal, clip(value), text))

    n_a, n_b = sig.grain(y_a, maps, steady), sig.grain(y_b, maps, steady)
    grain_overall, grain_regions = _log_ratios(n_a, n_b, _GRAIN_FLOOR)
    # Did the less grainy side lose edge contrast too (smoothing), or the grainier side gain
    # noise? Edge contrast is noise-blind; regions without edge samples use the frame-wide gap.
    k_a, k_b = sig.edge_contrast(y_a, maps), sig.edge_contrast(y_b, maps)
    contrast_overall, contrast_regions = _log_ratios(k_a, k_b, 0.0)
    # Frame-wide only: edge contrast is blind to noise (a boiling region raises the gradient
    # ``detail`` reads), so it tells a softer picture from a noisier one.
    add(
        "contrast",
        _DETAIL_SCALE * contrast_overall,
        f"lower edge contrast (across shared edges {k_a.overall:.1f} vs {k_b.overall:.1f})",
    )
    local_contrast = np.where(np.isnan(contrast_regions), contrast_overall, contrast_regions)
    noise, region = _frame_and_worst_region(
        float(_unexplained_by_smoothing(grain_overall, contrast_overall)),
        _unexplained_by_smoothing(grain_regions, local_contrast),
    )
    add("grain", -noise, f"more grain (noise sigma {_pooled_text(n_a, n_b, region)})")
    s_a, s_b = sig.sharpness(y_a, maps), sig.sharpness(y_b, maps)
    detail_overall, detail_regions = _log_ratios(s_a, s_b, 0.0)
    # Added noise raises the gradient at edges too: the part of a detail gap that the same side's
    # unexplained extra grain accounts for is not detail.
    detail, region = _frame_and_worst_region(
        float(
            _unexplained_by_noise(detail_overall, _unexplained_by_smoothing(grain_overall, contrast_overall))
        ),
        _unexplained_by_noise(detail_regions, _unexplained_by_smoothing(grain_regions, local_contrast)),
    )
    add("detail", _DETAIL_SCALE * detail, f"less edge detail (gradient {_pooled_text(s_a, s_b, region)})")
    out += _blocks(y_a, y_b)

    if stalls is not None and steady is not None:
        held_a, held_b = stalls
        n_a_held, n_b_held, n_steps = int(held_a.sum()), int(held_b.sum()), len(held_a)
        add(
            "stall",
            -_STALL_SCALE * (n_a_held - n_b_held) / n_steps,
            f"held/frozen frames ({n_a_held} vs {n_b_held} of {n_steps} frame steps repeat)",
        )
        if len(a) >= 3:
            # Compare steadiness only over frame triples where both sides move: a side that
            # stopped would otherwise look perfectly steady next to real motion.
            keep = steady[:-1] & steady[1:]
            f_a, f_b = sig.flicker(h_a, keep), sig.flicker(h_b, keep)
            jitter_overall, jitter_regions = _log_ratios(f_a, f_b, _FLICKER_FLOOR)
            if held_cells is not None and len(jitter_regions) == loc.GRID * loc.GRID:
                jitter_regions[sticking(held_cells)] = np.nan
            jitter, region = _frame_and_worst_region(jitter_overall, jitter_regions)
            add("flicker", -jitter, f"more flicker (brightness jitter {_pooled_text(f_a, f_b, region)})")

    if ref is not None and h_r is not None:
        q_a, q_b = sig.block_ssim(h_r, h_a, h_b)
        e_a, e_b = 1.0 - q_a, 1.0 - q_b
        mse_a, mse_b = sig.mse(a, ref), sig.mse(b, ref)
        # Half structural (luma SSIM), half per-pixel (RGB MSE, so colour errors count).
        # Floors include the deviation both sides share (the smaller of the two errors): two
        # renderings that deviate alike come out even, one that deviates much more still counts.
        fidelity = -0.5 * (
            _log_ratio(e_a, e_b, _SSIM_FLOOR + min(e_a, e_b))
            + _log_ratio(mse_a, mse_b, _MSE_FLOOR + min(mse_a, mse_b))
        )
        add(
            "fidelity",
            fidelity,
            f"lower fidelity to the reference (SSIM {1 - e_a:.3f} vs {1 - e_b:.3f}, "
            f"PSNR {_psnr(mse_a):.1f} vs {_psnr(mse_b):.1f} dB)",
        )
    return out
