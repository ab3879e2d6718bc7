"""Turns an agreement result (``labeler.agreement.compute_agreement``) into files and text:
agreement.json, report.md (with the metric definitions), three PNG plots, and the headline table.

Works on the JSON-ready dict alone, so a saved agreement.json can be re-rendered. matplotlib is
imported lazily, with the Agg backend, only when plots are drawn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["DEFINITIONS_MD", "headline", "render_markdown", "write_report"]

_LABELS = ("A", "B", "tie")

DEFINITIONS_MD = """\
Labels are A (A better, +1), B (B better, −1) and tie (0). Pairs join on `pair_id`, segments on
`index`; a segment whose `[start_frame, end_frame)` differs between the two files is left out of
every segment metric and listed under `join.boundary_mismatches`, as is a segment without a
partner (the pair's segment counts differ). Pairs on one side only are counted and listed.
Video-level figures use every joined pair.

- **accuracy_no_ties** — the DenseDPO paper's measure: over segments whose *human* label is not a
  tie, the fraction where the prediction's forced choice matches. The forced choice is the
  predicted label when it is A or B, otherwise the sign of `p_a − p_b`; half credit when they are
  equal. Null when every human label is a tie.
- **decided_coverage** — the share of segments with a non-tie *human* label that the prediction
  decides (labels A or B) — how often accuracy_no_ties scored a real choice rather than the sign
  of a predicted tie's margin. Null when every human label is a tie.
- **accuracy_both_decided** — exact match over the segments both the human and the prediction
  decide (`n_both_decided` of them). Read accuracy_no_ties beside these two: a judge that ties
  every hard segment can score well on it while deciding little.
- **accuracy_with_ties** — exact three-way match (A/B/tie) over all segments.
- **cohen_kappa** — unweighted Cohen's κ on the three-way labels (scikit-learn); null when
  undefined (e.g. both sides use a single label).
- **krippendorff_alpha** — ordinal Krippendorff's α with B < tie < A (`krippendorff` package);
  null when undefined.
- **confusion[human][pred]** — counts of segments by human label (rows) and predicted label.
- **accuracy_no_ties_ci95** — 95 % percentile bootstrap interval of accuracy_no_ties, resampling
  **pairs** with replacement (all segments of a pair move together), over the pairs with at least
  one non-tie human segment; deterministic given `--seed`.
- **video** — the same measures on `video_label`; the forced choice is the sign of `video_score`
  when the predicted `video_label` is a tie.
- **flip_rate** — share of predicted segments whose first `ab` vote and first `ba` vote (the two
  presentation orders) disagree, over the segments that carry both; null when none does.
- **coverage_accuracy** — `[coverage, accuracy]` for coverage 10 %, 20 %, … 100 %: the non-tie
  human segments sorted by the prediction's confidence `|p_a − p_b|` (descending, stable), the top
  ⌈coverage·n⌉ kept, accuracy as in accuracy_no_ties.
- **segment_position** — accuracy_no_ties and accuracy_with_ties per segment index (is the judge
  worse late in the video?).
- **human_ceiling** — with two or more `--human` files, the same measures between annotators (the
  later file in the place of the prediction); with three or more, the mean over annotator pairs,
  each pair listed. Compare a judge with this human–human ceiling.
- **per_human** — the prediction against each human file; the main figures use the first.
- **tie_threshold** (`--fit-tie-threshold`) — pairs split in halves by `--seed`; on the first
  half, the `|p_a − p_b|` tie margin (from 0 and the observed values) that maximises
  accuracy_with_ties (on equal accuracy the one changing fewest predictions, then the smallest):
  below it a prediction becomes a tie, at or above it a predicted tie is decided by the sign of
  `p_a − p_b`, so the fit can raise or lower the judge's own margin. Reported with its accuracy
  on the held-out half next to the unchanged predictions' accuracy there, and how many held-out
  predictions it turned into ties (`heldout_decided_to_tie`) or decided (`heldout_tie_to_decided`).
"""


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(ci: list[float] | None) -> str:
    return "n/a" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _n(block: dict[str, Any]) -> str:
    return f"{block['n']} ({block['n_no_ties']})"


def headline(result: dict[str, Any]) -> str:
    """The compact table printed to stdout."""
    seg, vid = result["segment"], result["video"]
    rows = [
        ("", "segment", "video"),
        ("n (non-tie human)", _n(seg), _n(vid)),
        ("accuracy, no ties", _f(seg["accuracy_no_ties"]), _f(vid["accuracy_no_ties"])),
        ("  95% CI (pairs)", _ci(seg["accuracy_no_ties_ci95"]), _ci(vid["accuracy_no_ties_ci95"])),
        ("decided coverage", _f(seg["decided_coverage"]), _f(vid["decided_coverage"])),
        ("accuracy, both decided", _f(seg["accuracy_both_decided"]), _f(vid["accuracy_both_decided"])),
        ("accuracy, with ties", _f(seg["accuracy_with_ties"]), _f(vid["accuracy_with_ties"])),
        ("Cohen's kappa", _f(seg["cohen_kappa"]), _f(vid["cohen_kappa"])),
        ("Krippendorff's alpha", _f(seg["krippendorff_alpha"]), _f(vid["krippendorff_alpha"])),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"agreement: {result['inputs']['pred']} vs {result['inputs']['human'][0]}"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, width, strict=True)).rstrip() for r in rows]
    flip = result["flip_rate"]
    flip_text = (
        "n/a (no ab/ba votes)" if flip is None else f"{flip:.3f} over {result['flip_rate_n']} segments"
    )
    lines.append(f"{'flip rate (ab vs ba)'.ljust(width[0])}  {flip_text}")
    ceiling = result.get("human_ceiling")
    if ceiling:
        cs = ceiling["segment"]
        lines.append(
            f"{'human ceiling'.ljust(width[0])}  segment accuracy no ties {_f(cs['accuracy_no_ties'])}, "
            f"kappa {_f(cs['cohen_kappa'])}"
        )
    join = result["join"]
    lines.append(
        f"{'join'.ljust(width[0])}  {join['n_pairs_joined']} pairs; {join['n_only_in_pred']} only in pred, "
        f"{join['n_only_in_human']} only in human; {join['n_boundary_mismatches']} boundary mismatches"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- markdown


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _confusion_md(conf: dict[str, dict[str, int]]) -> str:
    return _md_table(["human \\ pred", *_LABELS], [[h, *(conf[h][p] for p in _LABELS)] for h in _LABELS])


def _listing(ids: list[Any], limit: int = 20) -> str:
    shown = ", ".join(f"`{x}`" for x in ids[:limit])
    return shown + (f" … and {len(ids) - limit} more (all in agreement.json)" if len(ids) > limit else "")


def render_markdown(result: dict[str, Any]) -> str:
    seg, vid, join = result["segment"], result["video"], result["join"]
    inputs = result["inputs"]
    parts = [
        "# Label agreement report",
        f"Prediction: `{inputs['pred']}` ({_labeler_text(inputs.get('pred_labeler', {}))}); "
        f"human: {', '.join(f'`{h}`' for h in inputs['human'])} (the first is the reference).",
        "```\n" + headline(result) + "\n```",
        "## Headline metrics",
        _md_table(
            ["metric", "segment", "video"],
            [
                ["n", seg["n"], vid["n"]],
                ["n (human non-tie)", seg["n_no_ties"], vid["n_no_ties"]],
                ["accuracy_no_ties", _f(seg["accuracy_no_ties"]), _f(vid["accuracy_no_ties"])],
                ["decided_coverage", _f(seg["decided_coverage"]), _f(vid["decided_coverage"])],
                ["accuracy_both_decided", _f(seg["accuracy_both_decided"]), _f(vid["accuracy_both_decided"])],
                [
                    "accuracy_no_ties_ci95",
                    _ci(seg["accuracy_no_ties_ci95"]),
                    _ci(vid["accuracy_no_ties_ci95"]),
                ],
                ["accuracy_with_ties", _f(seg["accuracy_with_ties"]), _f(vid["accuracy_with_ties"])],
                ["cohen_kappa", _f(seg["cohen_kappa"]), _f(vid["cohen_kappa"])],
                ["krippendorff_alpha", _f(seg["krippendorff_alpha"]), _f(vid["krippendorff_alpha"])],
            ],
        ),
        f"Bootstrap: {result['bootstrap']['resamples']} resamples over pairs, seed {result['bootstrap']['seed']}.",
        "### Confusion, segments (rows: human, columns: prediction)",
        _confusion_md(seg["confusion"]),
        "![confusion](confusion.png)",
        "### Confusion, videos",
        _confusion_md(vid["confusion"]),
        "## Position bias",
        "flip rate: "
        + (
            "n/a (the prediction has no ab/ba votes)"
            if result["flip_rate"] is None
            else f"{result['flip_rate']:.3f} over {result['flip_rate_n']} segments with both votes"
        ),
        "## Coverage vs accuracy",
        _md_table(
            ["coverage", "accuracy_no_ties"], [[f"{c:.0%}", _f(a)] for c, a in result["coverage_accuracy"]]
        )
        if result["coverage_accuracy"]
        else "No non-tie human segment: nothing to rank.",
        "![coverage](coverage_accuracy.png)",
        "## Accuracy by segment position",
        _md_table(
            ["index", "n", "n non-tie", "accuracy_no_ties", "accuracy_with_ties"],
            [
                [r["index"], r["n"], r["n_no_ties"], _f(r["accuracy_no_ties"]), _f(r["accuracy_with_ties"])]
                for r in result["segment_position"]
            ],
        ),
        "![segment position](segment_position.png)",
        *_ceiling_md(result),
        *_tie_md(result.get("tie_threshold")),
        "## Join",
        _join_md(join),
    ]
    if result.get("notes"):
        parts += ["## Notes", "\n".join(f"- {n}" for n in result["notes"])]
    parts += ["## Definitions", DEFINITIONS_MD]
    return "\n\n".join(parts) + "\n"


def _join_md(join: dict[str, Any]) -> str:
    mismatched = [
        f"{m['pair_id']}#{m['index']} pred {m['pred']} human {m['human']}"
        for m in join["boundary_mismatches"]
    ]
    counts = [
        f"{m['pair_id']} ({m['n_pred']} pred vs {m['n_human']} human)"
        for m in join["segment_count_mismatches"]
    ]
    return "\n".join(
        [
            f"{join['n_pairs_joined']} pairs joined ({join['n_pairs_pred']} in pred, {join['n_pairs_human']} in "
            f"human), {join['n_segments_joined']} segments compared.",
            "",
            f"- only in pred ({join['n_only_in_pred']}): {_listing(join['only_in_pred']) or '—'}",
            f"- only in human ({join['n_only_in_human']}): {_listing(join['only_in_human']) or '—'}",
            f"- pairs with different segment counts ({len(counts)}): {_listing(counts) or '—'}",
            f"- segments left out for mismatched boundaries ({len(mismatched)}): {_listing(mismatched) or '—'}",
        ]
    )


def _labeler_text(labeler: dict[str, Any]) -> str:
    keys = ("judge", "model", "prompt_id")
    return ", ".join(f"{k} {labeler[k]}" for k in keys if labeler.get(k)) or "unknown labeler"


def _ceiling_md(result: dict[str, Any]) -> list[str]:
    out = []
    if result.get("per_human"):
        rows = []
        for p in result["per_human"]:
            if "error" in p:
                rows.append([p["human"], p["error"], "", "", ""])
            else:
                s = p["segment"]
                rows.append(
                    [
                        p["human"],
                        s["n"],
                        _f(s["accuracy_no_ties"]),
                        _f(s["accuracy_with_ties"]),
                        _f(s["cohen_kappa"]),
                    ]
                )
        out += [
            "## Prediction vs each human",
            _md_table(["human", "n", "acc no ties", "acc with ties", "κ"], rows),
        ]
    ceiling = result.get("human_ceiling")
    if ceiling:
        rows = [
            [
                f"{p['reference']} vs {p['other']}",
                p["segment"]["n"],
                _f(p["segment"]["accuracy_no_ties"]),
                _f(p["segment"]["accuracy_with_ties"]),
                _f(p["segment"]["cohen_kappa"]),
                _f(p["video"]["accuracy_no_ties"]),
            ]
            for p in ceiling["pairs"]
        ]
        s = ceiling["segment"]
        rows.append(
            [
                "**ceiling**",
                s["n"],
                _f(s["accuracy_no_ties"]),
                _f(s["accuracy_with_ties"]),
                _f(s["cohen_kappa"]),
                _f(ceiling["video"]["accuracy_no_ties"]),
            ]
        )
        out += [
            "## Human–human ceiling",
            _md_table(["annotators", "n", "acc no ties", "acc with ties", "κ", "video acc no ties"], rows),
        ]
    return out


def _tie_md(fit: dict[str, Any] | None) -> list[str]:
    if not fit:
        return []
    return [
        "## Fitted tie threshold",
        f"Predictions with |p_a − p_b| < **{fit['threshold']:.4f}** become ties (fit on {fit['n_fit_pairs']} pairs, "
        f"accuracy with ties {_f(fit['fit_accuracy_with_ties'])}). Held out ({fit['n_heldout_pairs']} pairs): "
        f"{_f(fit['heldout_accuracy_with_ties'])} vs {_f(fit['heldout_baseline_accuracy_with_ties'])} unchanged; "
        f"predicted ties at or above it are decided by the sign of p_a − p_b "
        f"({fit['heldout_decided_to_tie']} held-out predictions became ties, "
        f"{fit['heldout_tie_to_decided']} ties became decided).",
    ]


# --------------------------------------------------------------------------- files and plots


def write_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write agreement.json, report.md and the three PNG plots into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "agreement.json",
        "report": out / "report.md",
        "confusion": out / "confusion.png",
        "coverage": out / "coverage_accuracy.png",
        "segment_position": out / "segment_position.png",
    }
    # allow_nan=False: a NaN reaching the file would be invalid JSON for most readers.
    paths["json"].write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    paths["report"].write_text(render_markdown(result), encoding="utf-8")
    _plot_all(result, paths)
    return paths


def _plot_all(result: dict[str, Any], paths: dict[str, Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, level in zip(axes, ("segment", "video"), strict=True):
        conf = result[level]["confusion"]
        grid = [[conf[h][p] for p in _LABELS] for h in _LABELS]
        ax.imshow(grid, cmap="Blues")
        top = max(max(row) for row in grid) or 1
        for i, row in enumerate(grid):
            for j, count in enumerate(row):
                ax.text(
                    j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black"
                )
        ax.set_xticks(range(3), _LABELS)
        ax.set_yticks(range(3), _LABELS)
        ax.set_xlabel("prediction")
        ax.set_ylabel("human")
        ax.set_title(f"{level} (n={result[level]['n']})")
    fig.tight_layout()
    fig.savefig(paths["confusion"], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    curve = result["coverage_accuracy"]
    if curve:
        ax.plot([c for c, _ in curve], [a for _, a in curve], marker="o")
    else:
        ax.text(0.5, 0.5, "no non-tie human segment", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("coverage (most confident fraction kept)")
    ax.set_ylabel("accuracy, no ties")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths["coverage"], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = result["segment_position"]
    idx = [r["index"] for r in rows]
    for key, label in (("accuracy_no_ties", "no ties"), ("accuracy_with_ties", "with ties")):
        ax.plot(idx, [float("nan") if r[key] is None else r[key] for r in rows], marker="o", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("segment index")
    ax.set_ylabel("accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths["segment_position"], dpi=100)
    plt.close(fig)
