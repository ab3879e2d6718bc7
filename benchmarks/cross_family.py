"""Question 7: is the embedded metrics judge's confidence still honest on artifacts it was not fitted on?

    python -m benchmarks.cross_family [--quick]

Two families of generation-like pairs, written apart: family A is the project's own
(labeler.demo.generated, what the shipped coefficients were fitted on) and family B is
benchmarks/family_b.py (other source views, nuisances and artifact implementations). Each has a tune
and a held-out part. The judge's signals are measured once per segment (as the engine samples and
sizes frames: benchmarks.judge_quality.segment_features); then, with and without the reference:

- the **shipped** coefficients are scored on both held-out parts;
- coefficients are **fitted on one family's tune part** (judge_quality's fit: direction, scale,
  tie margin with the same tie-recall goal, temperature) and scored on the other family's
  held-out part, both ways, beside the same fit on its own family's held-out part.

Scores: accuracy without ties (the forced choice), tie recall, decided coverage, and the expected
calibration error of the probabilities. Scoring uses the judge's own label rule and probability
function (labeler.judges.metrics.judge), so a row is what the judge would answer with those
coefficients.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    Column,
    add_common_args,
    default_work_dir,
    markdown_table,
    report_errors,
    result_envelope,
    write_result,
)

NAME = "cross_family"
REPLICAS, QUICK_REPLICAS = 5, 1
_LABELS = ("A", "B", "tie")
MODES = (("no_reference", False), ("reference", True))


def build_families(work: Path, quick: bool) -> dict[str, Any]:
    from benchmarks.family_b import build_family_b
    from labeler.demo.generated import build_generated

    n = QUICK_REPLICAS if quick else REPLICAS
    return {
        "A_tune": build_generated(work / "a_tune", split="tune", replicas=n),
        "A_heldout": build_generated(work / "a_heldout", split="heldout", replicas=n),
        "B_tune": build_family_b(work / "b_tune", split="tune", replicas=n),
        "B_heldout": build_family_b(work / "b_heldout", split="heldout", replicas=n),
    }


def fit_mode(feats: list[dict[str, float]], labels: list[str], with_ref: bool) -> dict[str, Any]:
    """Coefficients, tie margin and temperature fitted as benchmarks.judge_quality.fit_all does,
    on one set alone."""
    from benchmarks.judge_quality import TIE_RECALL_GOAL, TIE_WEIGHTS, fit, fit_temperature
    from labeler.judges.metrics.features import FAMILIES

    signals = [s for s in FAMILIES if with_ref or not s.startswith("fidelity")]
    ties = [f for f, y in zip(feats, labels, strict=True) if y == "tie"]
    for tie_weight in TIE_WEIGHTS:
        coef, margin = fit(feats, labels, signals, tie_weight)
        recall = np.mean([abs(sum(coef[k] * f.get(k, 0.0) for k in signals)) <= margin for f in ties])
        if recall >= TIE_RECALL_GOAL:
            break
    scores = np.array([sum(coef[k] * f.get(k, 0.0) for k in signals) for f in feats])
    return {"coefficients": coef, "margin": margin, "temperature": fit_temperature(scores, labels, margin)}


def shipped(mode: str) -> dict[str, Any]:
    from labeler.judges.metrics.judge import COEFFICIENTS, TEMPERATURES, TIE_MARGINS

    return {
        "coefficients": COEFFICIENTS[mode],
        "margin": TIE_MARGINS[mode],
        "temperature": TEMPERATURES[mode],
    }


def segment_kinds(demo_set: Any) -> list[str]:
    """The artifact kind of the worse side of every segment ("tie" where there is none), in the
    order segment_features measures them (manifest order, then segment index)."""
    from benchmarks.judge_quality import _kinds
    from labeler.schemas import read_records

    kinds = _kinds(demo_set.manifest)
    truth = {r.pair_id: r for r in read_records(demo_set.ground_truth)}
    return [
        kinds.get((pid, s.index), "tie") if s.label != "tie" else "tie"
        for pid in _manifest_ids(demo_set.manifest)
        for s in truth[pid].segments
    ]


def _manifest_ids(manifest: Path) -> list[str]:
    from labeler.schemas import read_manifest

    return [e.pair_id for e in read_manifest(manifest)]


def score(
    model: dict[str, Any], feats: list[dict[str, float]], labels: list[str], kinds: list[str] | None = None
) -> dict[str, Any]:
    """The judge's answers under ``model`` (its label rule and probabilities), against the truth;
    with ``kinds``, accuracy without ties per artifact kind too."""
    from labeler.agreement.metrics import expected_calibration_error
    from labeler.judges.metrics.judge import _probabilities

    coef, margin, temp = model["coefficients"], model["margin"], model["temperature"]
    credit, ties, decided, probs = [], [], [], []
    per_kind: dict[str, list[float]] = {}
    for i, (f, want) in enumerate(zip(feats, labels, strict=True)):
        total = sum(c * f.get(k, 0.0) for k, c in coef.items())
        label = "A" if total > margin else "B" if total < -margin else "tie"
        probs.append(_probabilities(total, margin, temp))
        if want == "tie":
            ties.append(label == "tie")
            continue
        decided.append(label != "tie")
        choice = label if label != "tie" else "A" if total > 0 else "B" if total < 0 else "tie"
        credit.append(1.0 if choice == want else 0.5 if choice == "tie" else 0.0)
        if kinds is not None:
            per_kind.setdefault(kinds[i], []).append(credit[-1])
    truth = np.array([_LABELS.index(y) for y in labels])
    return {
        "accuracy_no_ties": float(np.mean(credit)),
        "tie_recall": float(np.mean(ties)) if ties else None,
        "decided_coverage": float(np.mean(decided)) if decided else None,
        "ece": expected_calibration_error(np.array(probs), truth),
        "n_no_ties": len(credit),
        "n_ties": len(ties),
        "per_kind": {k: round(float(np.mean(v)), 3) for k, v in sorted(per_kind.items())},
    }


def run(quick: bool = False, work: Path | None = None) -> dict[str, Any]:
    from benchmarks.judge_quality import segment_features

    started = time.perf_counter()
    work = (work or default_work_dir()) / NAME
    sets = build_families(work, quick)
    rows: list[dict[str, Any]] = []
    fitted: dict[str, dict[str, Any]] = {}
    for mode, with_ref in MODES:
        data = {name: segment_features(s, with_ref) for name, s in sets.items()}
        kinds = {name: segment_kinds(s) for name, s in sets.items()}
        models = {"shipped": shipped(mode)}
        for family in ("A", "B"):
            models[f"fit on {family}"] = fitted.setdefault(mode, {})[family] = fit_mode(
                *data[f"{family}_tune"], with_ref
            )
        for model_name, model in models.items():
            for target in ("A_heldout", "B_heldout"):
                rows.append(
                    {
                        "model": model_name,
                        "evaluated_on": target,
                        "reference": with_ref,
                        **score(model, *data[target], kinds[target]),
                    }
                )
    result = result_envelope(NAME, {"quick": quick, "replicas": QUICK_REPLICAS if quick else REPLICAS})
    sizes = {name: s.segments for name, s in sets.items()}
    result.update(rows=rows, fitted=fitted, segments=sizes, seconds=round(time.perf_counter() - started, 1))
    return result


def table(result: dict[str, Any]) -> str:
    columns: list[Column] = [
        ("model", "coefficients", ""),
        ("evaluated_on", "scored on", ""),
        ("ref", "reference", ""),
        ("accuracy_no_ties", "accuracy, no ties", ".3f"),
        ("tie_recall", "tie recall", ".3f"),
        ("decided_coverage", "decided coverage", ".3f"),
        ("ece", "ECE", ".3f"),
        ("n", "segments (non-tie / tie)", ""),
    ]
    rows = [
        {**r, "ref": "yes" if r["reference"] else "no", "n": f"{r['n_no_ties']} / {r['n_ties']}"}
        for r in result["rows"]
    ]
    shipped_rows = [r for r in result["rows"] if r["model"] == "shipped"]
    kinds = sorted({k for r in shipped_rows for k in r["per_kind"]})
    kind_cols: list[Column] = [("kind", "kind", "")] + [
        (
            f"{r['evaluated_on']}_{r['reference']}",
            f"{r['evaluated_on']} {'with' if r['reference'] else 'no'} ref",
            ".2f",
        )
        for r in shipped_rows
    ]
    kind_rows = [
        {"kind": k, **{f"{r['evaluated_on']}_{r['reference']}": r["per_kind"].get(k) for r in shipped_rows}}
        for k in kinds
    ]
    return (
        markdown_table(rows, columns)
        + "\n\nShipped coefficients, accuracy without ties per artifact kind:\n\n"
        + markdown_table(kind_rows, kind_cols)
    )


@report_errors
def main(argv: list[str] | None = None) -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    result = run(quick=args.quick, work=args.work)
    print(table(result))
    print(f"-> {write_result(args.out, NAME, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(None))
