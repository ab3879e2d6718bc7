"""What the metrics judge measures: generic quality signals of the two sides, as gaps between them.

Every signal is a (floored) log-ratio or a difference between the sides, clipped to +-``_CLIP``,
positive when the first-shown side looks better; swapping the sides negates every value exactly.

Frame-quality signals (labeler.judges.metrics_signals), pooled over the frame *and* per region:
edge ``detail``, ``grain`` in flat areas, an 8-pixel ``blocks`` grid, brightness ``flicker``,
frames that ``stall``, and SSIM/MSE ``fidelity`` to the reference. Local and temporal signals
(labeler.judges.metrics_local), region by region and over time: ``roughness_*`` (irregular change
over time: boiling, jumps), ``held_region`` (a region still while the other side's moves) and
``fidelity_*`` (the error against the reference after a sub-pixel registration, measured against
the level of error both sides share, so only a *local* or *larger* loss counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from labeler.judges import metrics_local as loc
from labeler.judges import metrics_signals as sig

__all__ = ["FAMILIES", "Evidence", "measure"]

#: Each signal's family: the unit a user re-weights (``MetricsJudge(roughness=0.5)``).
FAMILIES: dict[str, str] = {
    "detail": "detail",
    "grain": "grain",
    "blocks": "blocks",
    "flicker": "flicker",
    "stall": "stall",
    "roughness_frame": "roughness",
    "roughness_local": "roughness",
    "roughness_peak": "roughness",
    "held_region": "held",
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
_ROUGH_FLOOR = 0.25  # grey levels: roughness differences below this are re-encoding noise
_CLIP = 3.0  # caps each signal, so one runaway measure cannot drown all the others


@dataclass(frozen=True)
class Evidence:
    signal: str
    value: float  # the measured gap, clipped: positive favours the first-shown video
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


def measure(a: np.ndarray, b: np.ndarray, ref: np.ndarray | None) -> list[Evidence]:
    """Every signal for the pair ``a`` (first shown) and ``b``, reference signals when ``ref`` is
    given; all [K, H, W, 3] uint8 of one size."""
    y_a, y_b = sig.luma(a), sig.luma(b)
    h_a, h_b = sig.half(y_a), sig.half(y_b)
    h_r = None if ref is None else sig.half(sig.luma(ref))
    held = _held(h_a, h_b)
    out = _frame_quality(a, b, ref, y_a, y_b, h_a, h_b, h_r, held)
    out += _local(h_a, h_b, h_r, held)
    return out


def _held(h_a: np.ndarray, h_b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """[K-1, cells] per side: the cells standing still while the other side's move (None for a
    single frame)."""
    if len(h_a) < 2:
        return None
    s_a, s_b = loc.cell_steps(loc.coarse(h_a)), loc.cell_steps(loc.coarse(h_b))
    return loc.held_cells(s_a, s_b), loc.held_cells(s_b, s_a)


def _sticking(held: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """[cells] bool: held on either side over two or more steps (a region that sticks, not one
    jump on the other side). Around such a hold (its start, its catching up) a cell's change is
    irregular on one side only because of the hold, so temporal steadiness leaves it out."""
    return (held[0] | held[1]).sum(axis=0) >= 2


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
) -> list[Evidence]:
    maps = sig.shared_maps(h_a, h_b)
    out: list[Evidence] = []

    def add(signal: str, value: float, text: str) -> None:
        out.append(Evidence(signal, _clip(value), text))

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
            jitter_overall, jitter_regions = _log_ratios(f_a, f_b, _FLICKER_FLOOR)
            if held_cells is not None and len(jitter_regions) == loc.GRID * loc.GRID:
                jitter_regions[_sticking(held_cells)] = np.nan
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


def _worst(x: np.ndarray) -> tuple[float, int]:
    """The most extreme entry and its index (|x| ties resolve alike in both orders)."""
    i = int(np.argmax(np.abs(x)))
    return float(x[i]), i


def _where(cell: int) -> str:
    g = loc.GRID
    rows = (
        ("top", "upper-middle", "lower-middle", "bottom") if g == 4 else tuple(f"row {i}" for i in range(g))
    )
    cols = (
        ("left", "centre-left", "centre-right", "right") if g == 4 else tuple(f"column {i}" for i in range(g))
    )
    return f"{rows[cell // g]} {cols[cell % g]}"


def _local(
    h_a: np.ndarray,
    h_b: np.ndarray,
    h_r: np.ndarray | None,
    held: tuple[np.ndarray, np.ndarray] | None,
) -> list[Evidence]:
    """Region-by-region and over-time signals (see the module doc). A local signal is the most
    extreme cell's gap *minus the median cell's gap*: what both sides share everywhere (one side's
    grain or encoding level) cancels, a confined artifact stands out."""
    out: list[Evidence] = []

    def add(signal: str, value: float, text: str) -> None:
        out.append(Evidence(signal, _clip(value), text))

    if len(h_a) >= 3 and held is not None:
        # Roughness only where neither side holds still: a region that stopped would otherwise
        # pass for perfectly smooth next to real motion.
        moving = ~(held[0] | held[1]) & ~_sticking(held)
        keep = (moving[:-1] & moving[1:]).astype(np.float32)
        count = np.maximum(keep.sum(axis=0), 1.0)
        r_a, r_b = loc.roughness(h_a), loc.roughness(h_b)
        c_a, c_b = (r_a * keep).sum(axis=0) / count, (r_b * keep).sum(axis=0) / count
        floor = float(np.median(np.minimum(c_a, c_b))) + _ROUGH_FLOOR
        add(
            "roughness_frame",
            math.log(np.median(c_b) + floor) - math.log(np.median(c_a) + floor),
            f"irregular change over time (median {np.median(c_a):.2f} vs {np.median(c_b):.2f})",
        )
        gap = np.log(c_b + floor) - np.log(c_a + floor)
        local, cell = _worst(gap - np.median(gap))
        add(
            "roughness_local",
            local,
            f"a region changing irregularly over time ({_where(cell)}: {c_a[cell]:.2f} vs {c_b[cell]:.2f})",
        )
        t_a, t_b = r_a.mean(axis=1), r_b.mean(axis=1)
        floor = float(np.median(np.minimum(t_a, t_b))) + _ROUGH_FLOOR
        add(
            "roughness_peak",
            math.log(t_b.max() + floor) - math.log(t_a.max() + floor),
            f"a sudden irregular frame change (peak {t_a.max():.2f} vs {t_b.max():.2f})",
        )
    if held is not None:
        share_a, share_b = held[0].mean(axis=0), held[1].mean(axis=0)
        value, cell = _worst(share_b - share_a)
        add(
            "held_region",
            value,
            f"a region standing still while the other side's moves ({_where(cell)}: "
            f"{share_a[cell]:.0%} vs {share_b[cell]:.0%} of frame steps)",
        )
    if h_r is not None:
        out += _local_fidelity(h_a, h_b, h_r)
    return out


def _beyond_median(gap: np.ndarray) -> np.ndarray:
    """Each cell's gap beyond the median cell's, counted at most as far as the cell's own gap
    points the same way: a side that loses fidelity everywhere (a frozen frame) must not win on
    the cells where it happens to lose least. Odd in ``gap``, so a swap negates it."""
    dev = gap - np.median(gap)
    return np.sign(dev) * np.minimum(np.abs(dev), np.maximum(np.sign(dev) * gap, 0.0))


def _local_fidelity(h_a: np.ndarray, h_b: np.ndarray, h_r: np.ndarray) -> list[Evidence]:
    """Error against the reference after a global sub-pixel registration, per frame and cell.
    The floor is the error level both sides share (twice the median of the smaller of the two, plus
    a grey level squared): two renderings that deviate alike come out even. A single cell's error
    varies much more between two equal renderings than the frame's does, so the local comparison
    uses a floor four times higher (chosen on the tune part, where it calibrated best): only a
    local loss well above what both share decides."""
    e_a, e_b = loc.registered_error(h_r, h_a, h_b)
    shared = 2.0 * float(np.median(np.minimum(e_a, e_b))) + 1.0
    out = [
        Evidence(
            "fidelity_frame",
            _clip(math.log(e_b.mean() + shared) - math.log(e_a.mean() + shared)),
            f"a larger error against the reference (MSE {e_a.mean():.1f} vs {e_b.mean():.1f}, "
            f"shared level {shared:.1f})",
        )
    ]
    c_a, c_b = e_a.mean(axis=0), e_b.mean(axis=0)
    gap = np.log(c_b + 4.0 * shared) - np.log(c_a + 4.0 * shared)
    local, cell = _worst(_beyond_median(gap))
    out.append(
        Evidence(
            "fidelity_local",
            _clip(local),
            f"a local loss of fidelity to the reference ({_where(cell)}: MSE {c_a[cell]:.1f} vs {c_b[cell]:.1f})",
        )
    )
    t_a, t_b = e_a.mean(axis=1), e_b.mean(axis=1)
    out.append(
        Evidence(
            "fidelity_peak",
            _clip(math.log(t_b.max() + shared) - math.log(t_a.max() + shared)),
            f"a frame far from the reference (worst frame MSE {t_a.max():.1f} vs {t_b.max():.1f})",
        )
    )
    return out
