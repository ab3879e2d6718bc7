"""A cascade run in two passes, both resumable (docs/design.md §2.8).

1. The cheap judge labels every pair into ``OUT.cheap.jsonl`` (an ordinary labeling job: pairs
   already there are skipped, failures go to ``OUT.cheap.errors.jsonl`` and are retried).
2. The segments to escalate are chosen from all the cheap labels at once (a share needs every
   confidence first), deterministically; then each pair not yet in ``OUT`` gets its escalated
   segments judged by the main engine (both orders, cache, budgets as usual) and is written with the
   cheap judge's verdict on the rest.

A rerun repeats pass 1 (nothing left to do once it is complete), ranks the same cheap labels the same
way, and continues pass 2 where it stopped; the main judge's answers are in the cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labeler.cascade.policy import Escalation, EscalationRule, choose_escalated, merge
from labeler.engine import Engine
from labeler.errors import CheapLabelMissing
from labeler.runners.local import BatchResult, run_batch
from labeler.schemas import (
    DensePreferenceRecord,
    ManifestEntry,
    Usage,
    iter_manifest,
    iter_records,
)


def cheap_path_for(out: str | Path) -> Path:
    """``OUT.jsonl`` -> ``OUT.cheap.jsonl``: the cheap judge's labels of every pair."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".cheap.jsonl")


@dataclass
class CascadeResult:
    cheap: BatchResult  # pass 1
    final: BatchResult  # pass 2 (what the summary's ordinary lines describe)
    escalation: Escalation
    cheap_file: Path
    rule: EscalationRule
    totals: dict[str, Any] = field(default_factory=dict)


def read_cheap_labels(cheap_file: Path, manifest: str | Path) -> dict[str, DensePreferenceRecord]:
    """The cheap records of the manifest's pairs (a cheap file shared with other manifests holds
    more; only this manifest's pairs are ranked)."""
    wanted = {item.pair_id for item in iter_manifest(manifest) if isinstance(item, ManifestEntry)}
    if not cheap_file.exists():
        return {}
    return {r.pair_id: r for r in iter_records(cheap_file) if r.pair_id in wanted}


def cascade_info(rule: EscalationRule, escalation: Escalation) -> dict[str, Any]:
    """The ``labeler.cascade`` block of every record of the run."""
    highest = None if escalation.highest is None else round(escalation.highest, 6)
    return {**rule.describe(), "escalated_confidence_max": highest}


async def run_cascade(
    manifest: str | Path,
    out: str | Path,
    cheap_engine: Engine,
    main_engine: Engine,
    rule: EscalationRule,
    *,
    workers: int = 4,
    progress: bool = True,
) -> CascadeResult:
    """Both passes; the engines are the caller's to close."""
    out = Path(out)
    cheap_file = cheap_path_for(out)
    first = await run_batch(manifest, cheap_file, cheap_engine, workers=workers, progress=progress)
    cheap = read_cheap_labels(cheap_file, manifest)
    escalation = choose_escalated(cheap.values(), rule)
    if first.stopped:  # the cheap judge gave up: rank nothing new, write nothing
        return CascadeResult(first, BatchResult(stopped=first.stopped), escalation, cheap_file, rule)
    chosen = escalation.by_pair()
    info = cascade_info(rule, escalation)
    errors = first.errors_file

    async def label(entry: ManifestEntry) -> DensePreferenceRecord:
        record = cheap.get(entry.pair_id)
        if record is None:
            raise CheapLabelMissing(
                f"the cheap judge ({cheap_engine.judge.name}) has no label for this pair (see {errors})"
            )
        return await escalate(entry, record, chosen.get(entry.pair_id, set()), main_engine, info)

    second = await run_batch(manifest, out, main_engine, workers=workers, progress=progress, label=label)
    result = CascadeResult(first, second, escalation, cheap_file, rule)
    result.totals = cascade_totals(out, cheap, main_engine)
    return result


async def escalate(
    entry: ManifestEntry,
    cheap: DensePreferenceRecord,
    indices: set[int],
    main_engine: Engine,
    info: Mapping[str, Any],
) -> DensePreferenceRecord:
    """The cascade's record of one pair: ``indices`` judged by the main engine, the rest cheap."""
    decided, usage = {}, Usage()
    if indices:
        _, segments, usage = await main_engine.label_some_segments(entry, indices)
        decided = {s.index: s for s in segments}
    seconds = entry.segment_seconds or main_engine.config.segment_seconds
    return merge(
        cheap,
        decided,
        main_judge=main_engine.judge.name,
        labeler=main_engine.labeler_info(seconds, entry.align_to_latent),
        usage=usage,
        cascade=info,
    )


async def label_pair_cascade(
    entry: ManifestEntry, cheap_engine: Engine, main_engine: Engine, rule: EscalationRule
) -> DensePreferenceRecord:
    """One pair on its own (the HTTP service): a share is of this pair's segments."""
    cheap = await cheap_engine.label_pair(entry)
    escalation = choose_escalated([cheap], rule)
    return await escalate(
        entry, cheap, escalation.of_pair(entry.pair_id), main_engine, cascade_info(rule, escalation)
    )


def cascade_totals(
    out: Path, cheap: Mapping[str, DensePreferenceRecord], main_engine: Engine
) -> dict[str, Any]:
    """What the whole output (this run and earlier ones) escalated and cost. A segment's tokens are
    counted whether its answer came from the endpoint or the cache, so the cost is what the escalated
    segments cost to label; the VLM alone would have labeled every segment at the same mean cost."""
    segments = escalated = input_tokens = output_tokens = 0
    main = main_engine.judge.name
    for record in iter_records(out) if out.exists() else ():
        if record.pair_id not in cheap:
            continue
        segments += len(record.segments)
        escalated += sum(s.decided_by == main for s in record.segments)
        input_tokens += record.usage.input_tokens
        output_tokens += record.usage.output_tokens
    cost = main_engine.judge.cost_usd(input_tokens, output_tokens)
    alone = cost * segments / escalated if cost is not None and escalated else None
    return {
        "segments": segments,
        "escalated": escalated,
        "cost_usd": cost,
        "vlm_alone_usd": alone,
        "saved_usd": None if alone is None or cost is None else alone - cost,
    }


def format_cascade(result: CascadeResult) -> str:
    """The summary lines of a cascade run."""
    t, rule = result.totals, result.rule
    how = f"least-confident {rule.share:g}" if rule.share is not None else f"confidence below {rule.below:g}"
    share = t["escalated"] / t["segments"] if t.get("segments") else 0.0
    lines = [
        f"cascade    {result.cheap.ok} pairs labeled by the cheap judge now, {result.cheap.skipped} before "
        f"({result.cheap.failed} failed) -> {result.cheap_file}",
        f"escalated  {t.get('escalated', 0)} of {t.get('segments', 0)} segments ({100 * share:.1f}%, {how})",
    ]
    if t.get("cost_usd") is None:
        lines.append("cost       unknown (the price table does not list the main model; give --price)")
    elif t.get("vlm_alone_usd") is None:
        lines.append(f"cost       ${t['cost_usd']:.4f} (nothing escalated: no VLM cost to compare with)")
    else:
        saved, alone = t["saved_usd"], t["vlm_alone_usd"]
        pct = 100 * saved / alone if alone else 0.0
        lines.append(
            f"cost       ${t['cost_usd']:.4f} for the escalated segments; the VLM alone: about "
            f"${alone:.4f}; saved about ${saved:.4f} ({pct:.0f}%)"
        )
    return "\n".join(lines)
