"""Region-by-region and over-time signals of the metrics judge, as gaps between the two sides.

A local signal is the most extreme cell's gap *minus the median cell's gap*: what both sides share
everywhere (one side's grain or encoding level) cancels, a confined artifact stands out. Over time,
the signals compare how each side changes from frame to frame: ``roughness_*`` (irregular change:
boiling, jumps), ``held_region`` and ``motion_local`` (a region still, or moving less, while the
other side's moves), ``reversal_*`` (the picture's change turning back on itself: a jump back in
time) and, with a reference, ``fidelity_*`` (the error left after a sub-pixel registration,
measured against the level of error both sides share). docs/metrics_judge.md has the principles.

Every value is positive when the first-shown side looks better, and swapping the sides negates it
exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from labeler.judges.metrics import local as loc

__all__ = ["Evidence", "clip", "held", "local_excess", "over_time", "sticking", "where"]

_CLIP = 3.0  # caps each signal, so one runaway measure cannot drown all the others
_ROUGH_FLOOR = 0.25  # grey levels: roughness differences below this are re-encoding noise
_MOTION_FLOOR = 0.3  # grey levels at 1/32 resolution: changes below this are grain, not motion
_INVISIBLE_MSE = 4.0  # (2 grey levels)^2 at half resolution: errors below this cannot be seen
_HOLD_FLOOR = 1.2  # grey levels at 1/8: the other side's change that counts as motion
_COARSE_HOLD_FLOOR = 1.0  # the same at 1/16, for the steadiness comparison (see ``_roughness``)


@dataclass(frozen=True)
class Evidence:
    signal: str
    value: float  # the measured gap, clipped: positive favours the first-shown video
    text: str  # "what was measured (first vs second)"


def clip(x: float) -> float:
    """Cap a gap at +-``_CLIP``; odd by construction (sign * min(|x|, c)), so swapping the sides
    negates it exactly."""
    return math.copysign(min(abs(x), _CLIP), x) if x else 0.0


def held(
    c_a: np.ndarray, c_b: np.ndarray, floor: float = _HOLD_FLOOR
) -> tuple[np.ndarray, np.ndarray] | None:
    """[K-1, cells] per side: the cells standing still while the other side's move more than
    ``floor`` grey levels, from coarse luma (``local.coarse``, or coarser); None for a
    single frame."""
    if len(c_a) < 2:
        return None
    s_a, s_b = loc.cell_steps(c_a), loc.cell_steps(c_b)
    return loc.held_cells(s_a, s_b, floor=floor), loc.held_cells(s_b, s_a, floor=floor)


def sticking(cells: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """[cells] bool: held on either side over two or more steps (a region that sticks, not one
    jump on the other side). Around such a hold (its start, its catching up) a cell's change is
    irregular on one side only because of the hold, so temporal steadiness leaves it out."""
    return (cells[0] | cells[1]).sum(axis=0) >= 2


def _worst(x: np.ndarray) -> tuple[float, int]:
    """The most extreme entry and its index (|x| ties resolve alike in both orders)."""
    i = int(np.argmax(np.abs(x)))
    return float(x[i]), i


def where(cell: int) -> str:
    g = loc.GRID
    rows = (
        ("top", "upper-middle", "lower-middle", "bottom") if g == 4 else tuple(f"row {i}" for i in range(g))
    )
    cols = (
        ("left", "centre-left", "centre-right", "right") if g == 4 else tuple(f"column {i}" for i in range(g))
    )
    return f"{rows[cell // g]} {cols[cell % g]}"


def local_excess(gap: np.ndarray) -> tuple[float, int]:
    """The most extreme cell's gap beyond the median cell's (``_beyond_median``), and that cell."""
    return _worst(_beyond_median(gap))


def over_time(
    h_a: np.ndarray,
    h_b: np.ndarray,
    c_a: np.ndarray,
    c_b: np.ndarray,
    h_r: np.ndarray | None,
    held_cells: tuple[np.ndarray, np.ndarray] | None,
    moving: np.ndarray | None = None,
) -> list[Evidence]:
    """The region-by-region and over-time signals (see the module doc) of half-resolution luma
    ``h_*`` and its coarse means ``c_*``. ``moving`` ([K-1] bool) marks the frame steps where
    neither side repeats a frame; steadiness (roughness, reversal) is compared over those only."""
    out: list[Evidence] = []
    if held_cells is not None:
        if len(h_a) >= 3:
            both = np.ones(len(h_a) - 2, bool) if moving is None else moving[:-1] & moving[1:]
            out += _roughness(h_a, h_b, loc.halve(c_a), loc.halve(c_b), both)
            out += _reversal(c_a, c_b, both)
        out += _held_and_motion(held_cells, loc.halve(loc.halve(c_a)), loc.halve(loc.halve(c_b)))
    if h_r is not None:
        out += _local_fidelity(h_a, h_b, h_r)
    return out


def _roughness(
    h_a: np.ndarray, h_b: np.ndarray, q_a: np.ndarray, q_b: np.ndarray, triples: np.ndarray
) -> list[Evidence]:
    """Irregular change over time (second temporal difference per cell), frame-wide, per region
    and at the worst frame. Only where neither side holds still: a region that stopped would
    otherwise pass for perfectly smooth next to real motion. Holding is judged at 1/16 resolution
    (``q_a``, ``q_b``), where a region boiling with noise averages out and does not pass for the
    *other* side moving while this one holds."""
    still = held(q_a, q_b, _COARSE_HOLD_FLOOR)
    assert still is not None  # three frames or more
    moving = ~(still[0] | still[1]) & ~sticking(still)
    keep = (moving[:-1] & moving[1:] & triples[:, None]).astype(np.float32)
    count = np.maximum(keep.sum(axis=0), 1.0)
    r_a, r_b = loc.roughness(h_a), loc.roughness(h_b)
    c_a, c_b = (r_a * keep).sum(axis=0) / count, (r_b * keep).sum(axis=0) / count
    floor = float(np.median(np.minimum(c_a, c_b))) + _ROUGH_FLOOR
    gap = np.log(c_b + floor) - np.log(c_a + floor)
    local, cell = local_excess(gap)
    t_a, t_b = r_a.mean(axis=1), r_b.mean(axis=1)
    peak_floor = float(np.median(np.minimum(t_a, t_b))) + _ROUGH_FLOOR
    return [
        Evidence(
            "roughness_frame",
            clip(math.log(np.median(c_b) + floor) - math.log(np.median(c_a) + floor)),
            f"irregular change over time (median {np.median(c_a):.2f} vs {np.median(c_b):.2f})",
        ),
        Evidence(
            "roughness_local",
            clip(local),
            f"a region changing irregularly over time ({where(cell)}: {c_a[cell]:.2f} vs {c_b[cell]:.2f})",
        ),
        Evidence(
            "roughness_peak",
            clip(math.log(t_b.max() + peak_floor) - math.log(t_a.max() + peak_floor)),
            f"a sudden irregular frame change (peak {t_a.max():.2f} vs {t_b.max():.2f})",
        ),
    ]


def _reversal(c_a: np.ndarray, c_b: np.ndarray, triples: np.ndarray) -> list[Evidence]:
    """How far each side's change turns back on itself between consecutive frame steps
    (``local.reversal``) over the frame triples given: the worst step (a jump back in time)
    and the mean (fresh noise turns back at every step, motion carries on)."""
    r_a, r_b = loc.reversal(c_a)[triples], loc.reversal(c_b)[triples]
    if len(r_a) == 0:
        r_a = r_b = np.zeros(1)
    return [
        Evidence(
            "reversal_peak",
            clip(float(r_a.min() - r_b.min())),
            f"the picture jumping back in time (worst step-to-step correlation {r_a.min():+.2f} vs "
            f"{r_b.min():+.2f})",
        ),
        Evidence(
            "reversal_mean",
            clip(float(r_a.mean() - r_b.mean())),
            f"change that keeps turning back (mean step-to-step correlation {r_a.mean():+.2f} vs "
            f"{r_b.mean():+.2f})",
        ),
    ]


def _held_and_motion(
    held_cells: tuple[np.ndarray, np.ndarray], q_a: np.ndarray, q_b: np.ndarray
) -> list[Evidence]:
    """A region standing still while the other side's moves (share of frame steps, at 1/8
    resolution), and a region moving less than the other side's, beyond what the median region
    differs (log-ratio of the mean change per cell at 1/32 resolution, ``q_a`` and ``q_b``, where
    grain and blotchy noise average out): a region that sticks, or lags, while the scene moves."""
    share_a, share_b = held_cells[0].mean(axis=0), held_cells[1].mean(axis=0)
    value, cell = _worst(share_b - share_a)
    m_a, m_b = loc.cell_steps(q_a).mean(axis=0), loc.cell_steps(q_b).mean(axis=0)
    motion, m_cell = local_excess(np.log(m_a + _MOTION_FLOOR) - np.log(m_b + _MOTION_FLOOR))
    return [
        Evidence(
            "held_region",
            clip(value),
            f"a region standing still while the other side's moves ({where(cell)}: "
            f"{share_a[cell]:.0%} vs {share_b[cell]:.0%} of frame steps)",
        ),
        Evidence(
            "motion_local",
            clip(motion),
            f"a region moving less than the other side's ({where(m_cell)}: mean change "
            f"{m_a[m_cell]:.2f} vs {m_b[m_cell]:.2f})",
        ),
    ]


def _beyond_median(gap: np.ndarray) -> np.ndarray:
    """Each cell's gap beyond the median cell's, counted at most as far as the cell's own gap
    points the same way: a side that loses fidelity everywhere (a frozen frame) must not win on
    the cells where it happens to lose least. Odd in ``gap``, so a swap negates it."""
    dev = gap - np.median(gap)
    return np.sign(dev) * np.minimum(np.abs(dev), np.maximum(np.sign(dev) * gap, 0.0))


def _local_fidelity(h_a: np.ndarray, h_b: np.ndarray, h_r: np.ndarray) -> list[Evidence]:
    """Error against the reference after a global sub-pixel registration, per frame and cell.
    The floor is the error level both sides share (twice the median of the smaller of the two) plus
    what cannot be seen (``_INVISIBLE_MSE``): two renderings that deviate alike come out even, and
    two near-perfect copies whose encodings differ invisibly (clear-copy ties) tie. A single cell's error
    varies much more between two equal renderings than the frame's does, so the local comparison
    uses a floor four times higher (chosen on the tune part, where it calibrated best): only a
    local loss well above what both share decides."""
    e_a, e_b = loc.registered_error(h_r, h_a, h_b)
    shared = 2.0 * float(np.median(np.minimum(e_a, e_b))) + _INVISIBLE_MSE
    out = [
        Evidence(
            "fidelity_frame",
            clip(math.log(e_b.mean() + shared) - math.log(e_a.mean() + shared)),
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
            clip(local),
            f"a local loss of fidelity to the reference ({where(cell)}: MSE {c_a[cell]:.1f} vs {c_b[cell]:.1f})",
        )
    )
    t_a, t_b = e_a.mean(axis=1), e_b.mean(axis=1)
    out.append(
        Evidence(
            "fidelity_peak",
            clip(math.log(t_b.max() + shared) - math.log(t_a.max() + shared)),
            f"a frame far from the reference (worst frame MSE {t_a.max():.1f} vs {t_b.max():.1f})",
        )
    )
    return out
