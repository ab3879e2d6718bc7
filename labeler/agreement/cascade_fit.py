"""``python -m labeler.agreement --fit-cascade CHEAP.jsonl VLM.jsonl --human H.jsonl --out DIR``:
how accurate a cascade (labeler.cascade) would be at every escalated share, and what it would cost.

The cheap file holds a cheap judge's labels of every segment (a cascade run's ``OUT.cheap.jsonl``),
the VLM file the main judge's labels of the same segments (a run with the VLM alone), the human
file the reference. Segments are ranked as the cascade ranks them (cheap confidence, then pair id,
then index); escalating the first k takes the VLM's label there and the cheap one elsewhere. A
segment's cost is its VLM record's tokens split evenly over the record's segments, priced from the
model table or ``--price``. The fit is the lowest-cost share whose accuracy reaches the target.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labeler.agreement.metrics import forced_choice_credit
from labeler.cascade.policy import segment_confidence
from labeler.errors import CascadeFitError
from labeler.judges.pricing import estimate_cost
from labeler.schemas import LABEL_VALUE, DensePreferenceRecord

#: What ``--target-accuracy`` is measured on.
__all__ = ["CascadeFitError", "cascade_curve", "fit_cascade", "write_cascade_report"]

TARGET_METRICS = ("accuracy_with_ties", "accuracy_no_ties", "accuracy_both_decided")
CURVE_STEPS = 20  # the table and the plot: escalated share 0 %, 5 %, ... 100 %


@dataclass
class _Rows:
    """The joined segments in the cascade's escalation order."""

    human: np.ndarray
    cheap: np.ndarray
    cheap_margin: np.ndarray
    vlm: np.ndarray
    vlm_margin: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    excluded: int  # segments of the human file without a matching cheap and VLM segment


def _by_id(records: Sequence[DensePreferenceRecord]) -> dict[str, DensePreferenceRecord]:
    return {r.pair_id: r for r in records}


def _join(
    cheap: Sequence[DensePreferenceRecord],
    vlm: Sequence[DensePreferenceRecord],
    human: Sequence[DensePreferenceRecord],
) -> _Rows:
    c, v = _by_id(cheap), _by_id(vlm)
    rows: list[tuple[Any, ...]] = []
    excluded = 0
    for h in human:
        cr, vr = c.get(h.pair_id), v.get(h.pair_id)
        for seg in h.segments:
            cs = cr.segments[seg.index] if cr is not None and seg.index < len(cr.segments) else None
            vs = vr.segments[seg.index] if vr is not None and seg.index < len(vr.segments) else None
            frames = (seg.start_frame, seg.end_frame)
            if (
                cs is None
                or vs is None
                or (cs.start_frame, cs.end_frame) != frames
                or (vs.start_frame, vs.end_frame) != frames
            ):
                excluded += 1
                continue
            assert vr is not None
            share = 1 / len(vr.segments)
            rows.append(
                (
                    segment_confidence(cs),
                    h.pair_id,
                    seg.index,
                    LABEL_VALUE[seg.label],
                    LABEL_VALUE[cs.label],
                    cs.p_a - cs.p_b,
                    LABEL_VALUE[vs.label],
                    vs.p_a - vs.p_b,
                    vr.usage.input_tokens * share,
                    vr.usage.output_tokens * share,
                )
            )
    if not rows:
        raise CascadeFitError("no segment is labeled in all three files (cheap, VLM and human)")
    rows.sort(key=lambda r: (r[0], r[1], r[2]))  # the cascade's own ranking (labeler.cascade.policy)
    cols = list(zip(*rows, strict=True))
    return _Rows(
        human=np.asarray(cols[3], dtype=int),
        cheap=np.asarray(cols[4], dtype=int),
        cheap_margin=np.asarray(cols[5], dtype=float),
        vlm=np.asarray(cols[6], dtype=int),
        vlm_margin=np.asarray(cols[7], dtype=float),
        input_tokens=np.asarray(cols[8], dtype=float),
        output_tokens=np.asarray(cols[9], dtype=float),
        excluded=excluded,
    )


def _escalated(x_vlm: np.ndarray, x_cheap: np.ndarray) -> np.ndarray:
    """For k = 0..n: the sum of ``x_vlm`` over the first k rows plus ``x_cheap`` over the rest."""
    head = np.concatenate([[0.0], np.cumsum(x_vlm)])
    tail = np.concatenate([[0.0], np.cumsum(x_cheap)])
    return head + (tail[-1] - tail)


def _ratio(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    return [float(a / b) if b else None for a, b in zip(num, den, strict=True)]


def cascade_curve(rows: _Rows, price: tuple[float, float] | None, model: str | None) -> dict[str, Any]:
    """Every metric at every number k of escalated segments (k = 0..n)."""
    n = rows.human.size
    decided = rows.human != 0
    with_ties = _escalated((rows.vlm == rows.human) * 1.0, (rows.cheap == rows.human) * 1.0)
    credit_v = forced_choice_credit(rows.human, rows.vlm, rows.vlm_margin) * decided
    credit_c = forced_choice_credit(rows.human, rows.cheap, rows.cheap_margin) * decided
    both_v, both_c = decided & (rows.vlm != 0), decided & (rows.cheap != 0)
    both = _escalated(both_v * 1.0, both_c * 1.0)
    both_right = _escalated(
        (both_v & (rows.vlm == rows.human)) * 1.0, (both_c & (rows.cheap == rows.human)) * 1.0
    )
    tokens_in = np.concatenate([[0.0], np.cumsum(rows.input_tokens)])
    tokens_out = np.concatenate([[0.0], np.cumsum(rows.output_tokens)])
    cost = None
    if model is not None or price is not None:
        unit = (
            estimate_cost(model or "", 1_000_000, 0, price=price),
            estimate_cost(model or "", 0, 1_000_000, price=price),
        )
        if unit[0] is not None and unit[1] is not None:
            cost = (tokens_in * unit[0] + tokens_out * unit[1]) / 1_000_000
    n_decided = int(decided.sum())
    return {
        "n": n,
        "share": (np.arange(n + 1) / n).tolist(),
        "accuracy_with_ties": (with_ties / n).tolist(),
        "accuracy_no_ties": (_escalated(credit_v, credit_c) / n_decided).tolist()
        if n_decided
        else [None] * (n + 1),
        "decided_coverage": (both / n_decided).tolist() if n_decided else [None] * (n + 1),
        "accuracy_both_decided": _ratio(both_right, both),
        "input_tokens": tokens_in.tolist(),
        "output_tokens": tokens_out.tolist(),
        "cost_usd": None if cost is None else cost.tolist(),
    }


def fit_cascade(
    cheap: Sequence[DensePreferenceRecord],
    vlm: Sequence[DensePreferenceRecord],
    human: Sequence[DensePreferenceRecord],
    *,
    target: float,
    metric: str = "accuracy_with_ties",
    price: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The curve at ``CURVE_STEPS`` shares, and the lowest-cost share reaching ``target`` on ``metric``
    (cost in USD when priced, else in tokens; costs only grow with k, so it is the smallest such k)."""
    if metric not in TARGET_METRICS:
        raise CascadeFitError(f"unknown target metric {metric!r}; choose one of {', '.join(TARGET_METRICS)}")
    rows = _join(cheap, vlm, human)
    model = vlm[0].labeler.model if vlm else None
    full = cascade_curve(rows, price, model)
    n = full["n"]
    reach = [k for k, value in enumerate(full[metric]) if value is not None and value >= target - 1e-12]
    best = reach[0] if reach else None

    def point(k: int) -> dict[str, Any]:
        keys = ("share", *TARGET_METRICS, "decided_coverage", "input_tokens", "output_tokens", "cost_usd")
        out = {key: (None if full[key] is None else full[key][k]) for key in keys}
        return {"escalated": k, **out}

    steps = sorted({round(i * n / CURVE_STEPS) for i in range(CURVE_STEPS + 1)})
    return {
        "n_segments": n,
        "n_excluded": rows.excluded,
        "model": model,
        "priced": full["cost_usd"] is not None,
        "target": {"metric": metric, "accuracy": target},
        "cheap_alone": point(0),
        "vlm_alone": point(n),
        "best": None if best is None else point(best),
        "curve": [point(k) for k in steps],
    }


# --------------------------------------------------------------------------- report


def _f(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _cost(p: dict[str, Any], priced: bool) -> str:
    if priced:
        return f"${p['cost_usd']:.4f}"
    return f"{p['input_tokens']:.0f} in / {p['output_tokens']:.0f} out tokens"


def render_cascade(fit: dict[str, Any]) -> str:
    t, priced = fit["target"], fit["priced"]
    best = fit["best"]
    if best is None:
        verdict = f"No escalated share reaches {t['metric']} ≥ {t['accuracy']:g} (the VLM alone: {_f(fit['vlm_alone'][t['metric']])})."
    else:
        verdict = (
            f"Escalating the least-confident **{best['share']:.1%}** ({best['escalated']} of {fit['n_segments']} segments) "
            f"reaches {t['metric']} {_f(best[t['metric']])} ≥ {t['accuracy']:g} at {_cost(best, priced)}, "
            f"against {_cost(fit['vlm_alone'], priced)} for the VLM alone."
        )
    header = [
        "escalated share",
        "accuracy_with_ties",
        "accuracy_no_ties",
        "decided_coverage",
        "accuracy_both_decided",
        "cost",
    ]
    lines = [
        "# Cascade fit",
        verdict,
        f"{fit['n_segments']} segments in all three files ({fit['n_excluded']} human segments without a match left out); "
        f"VLM model: {fit['model']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for p in fit["curve"]:
        cells = [
            f"{p['share']:.0%}",
            _f(p["accuracy_with_ties"]),
            _f(p["accuracy_no_ties"]),
            _f(p["decided_coverage"]),
        ]
        lines.append("| " + " | ".join([*cells, _f(p["accuracy_both_decided"]), _cost(p, priced)]) + " |")
    lines += ["", "![accuracy against escalated share](cascade.png)", ""]
    return "\n".join(lines)


def _plot(fit: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = fit["curve"]
    share = [p["share"] for p in curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("accuracy_with_ties", "accuracy_no_ties"):
        ax.plot(share, [np.nan if p[key] is None else p[key] for p in curve], marker="o", label=key)
    ax.axhline(fit["target"]["accuracy"], color="grey", linestyle=":", label="target")
    if fit["best"] is not None:
        ax.axvline(fit["best"]["share"], color="green", linestyle="--", label="fitted share")
    ax.set_xlabel("escalated share (least confident first)")
    ax.set_ylabel("accuracy against the human labels")
    cost_key = "cost_usd" if fit["priced"] else "input_tokens"
    twin = ax.twinx()
    twin.plot(share, [p[cost_key] for p in curve], color="black", alpha=0.4, label=cost_key)
    twin.set_ylabel("USD" if fit["priced"] else "input tokens")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_cascade_report(fit: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "cascade.json",
        "report": out_dir / "cascade.md",
        "plot": out_dir / "cascade.png",
    }
    paths["json"].write_text(json.dumps(fit, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    paths["report"].write_text(render_cascade(fit), encoding="utf-8")
    _plot(fit, paths["plot"])
    return paths


def cascade_headline(fit: dict[str, Any]) -> str:
    t, priced = fit["target"], fit["priced"]
    lines = [f"cascade fit over {fit['n_segments']} segments ({t['metric']}, target {t['accuracy']:g})"]
    for p in fit["curve"]:
        lines.append(f"  escalate {p['share']:>5.0%}  {_f(p[t['metric']])}  {_cost(p, priced)}")
    best = fit["best"]
    if best is None:
        lines.append("no share reaches the target")
    else:
        lines.append(
            f"best: escalate {best['share']:.1%} ({best['escalated']} segments): {_f(best[t['metric']])} "
            f"at {_cost(best, priced)} (VLM alone {_cost(fit['vlm_alone'], priced)})"
        )
    return "\n".join(lines)
