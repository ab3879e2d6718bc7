"""``--dry-run``: what a job would send and cost, from the real plans, before anything is spent."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from labeler.engine import Engine, PairPlan, SegmentPlan
from labeler.schemas import InputError, JudgeEstimate, ManifestLineError, SegmentRequest, iter_manifest


def _resized(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def dry_run(manifest: str | Path, engine: Engine) -> str:
    judge, cfg = engine.judge, engine.config
    totals = {
        "pairs": 0,
        "bad_pairs": 0,
        "segments": 0,
        "requests": 0,
        "cached": 0,
        "images": 0,
        "input_tokens": 0,
        "output_tokens": 0,
    }
    estimates: dict[tuple[int, int, int, bool], JudgeEstimate] = {}
    problems: list[str] = []
    for entry in iter_manifest(manifest):
        if isinstance(entry, ManifestLineError):
            totals["bad_pairs"] += 1
            problems.append(entry.message)
            continue
        try:
            plan = engine.plan_pair(entry)
            info, _ = engine.video_meta(entry.video_a)  # remembered by plan_pair: no second probe
        except Exception as exc:  # the real run would write an error record for this pair
            totals["bad_pairs"] += 1
            problems.append(f"{entry.pair_id}: {exc}")
            continue
        h, w = _resized(info.width, info.height, cfg.max_side)
        try:
            pair_estimates = [
                _estimate(engine, estimates, entry.prompt, seg, (h, w), plan) for seg in plan.segments
            ]
        except InputError as exc:  # e.g. --show-reference on a pair without a reference
            totals["bad_pairs"] += 1
            problems.append(f"{entry.pair_id}: {exc}")
            continue
        totals["pairs"] += 1
        for seg, est in zip(plan.segments, pair_estimates, strict=True):
            totals["segments"] += 1
            for key in seg.keys.values():
                if key in engine.cache:
                    totals["cached"] += 1
                    continue
                totals["requests"] += 1
                totals["images"] += est.images
                totals["input_tokens"] += est.input_tokens
                totals["output_tokens"] += est.output_tokens
    lines = [f"dry run: {judge.name}" + (f" {judge.model}" if judge.model else "") + " - nothing was sent"]
    lines += [f"  {k:<14}{v}" for k, v in totals.items()]
    lines += _details(estimates.values(), totals["requests"])
    if judge.model:
        online = judge.cost_usd(totals["input_tokens"], totals["output_tokens"])
        batch = judge.cost_usd(totals["input_tokens"], totals["output_tokens"], batch=True)
        if online is not None and batch is not None:
            lines.append(f"  {'cost_usd':<14}{online:.4f} online, {batch:.4f} with --openai-batch")
        else:
            lines.append(f"  {'cost_usd':<14}unknown model price (self-hosted? give --price IN,OUT)")
    lines += [f"  problem: {p}" for p in problems[:10]]
    return "\n".join(lines)


def _estimate(
    engine: Engine,
    estimates: dict[tuple[int, int, int, bool], JudgeEstimate],
    prompt: str,
    seg: SegmentPlan,
    size: tuple[int, int],
    plan: PairPlan,
) -> JudgeEstimate:
    """The judge's estimate of one segment's request, on blank frames, once per geometry (and
    whether a reference goes with the pair)."""
    shape = (len(seg.frame_indices), *size)
    key = (*shape, plan.use_reference)
    if key not in estimates:
        blank = np.zeros((*shape, 3), np.uint8)
        request = SegmentRequest(
            prompt=prompt,
            frames_first=blank,
            frames_second=blank,
            start_s=seg.start_s,
            end_s=seg.end_s,
            reference=blank if plan.use_reference else None,
        )
        estimates[key] = engine.judge.estimate(request)
    return estimates[key]


def _details(estimates: Iterable[JudgeEstimate], requests: int) -> list[str]:
    """What each video's frames will be (per frame geometry), and the reasoning the output
    tokens assume: stated, so a reasoning model's estimate is not mistaken for a bill."""
    lines: list[str] = []
    reasoning: list[str] = []
    for est in estimates:
        if "frames" in est.extra:
            lines.append(f"  {'frames':<14}{est.extra['frames']}")
        if est.extra.get("reasoning_effort") is not None and not reasoning:
            per = est.extra.get("reasoning_tokens", 0)
            reasoning.append(
                f"  {'reasoning':<14}output_tokens include ~{per} reasoning tokens per request "
                f"({per * requests} in all) assumed for effort {est.extra['reasoning_effort']!r}; "
                "the real amount varies and is billed as output"
            )
    return lines + reasoning
