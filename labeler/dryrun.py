"""``--dry-run``: what a job would send and cost, from the real plans, before anything is spent."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labeler.engine import Engine
from labeler.judges.pricing import estimate_cost
from labeler.schemas import JudgeEstimate, ManifestLineError, SegmentRequest, iter_manifest


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
    estimates: dict[tuple[int, int, int], JudgeEstimate] = {}
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
        totals["pairs"] += 1
        h, w = _resized(info.width, info.height, cfg.max_side)
        for seg in plan.segments:
            totals["segments"] += 1
            shape = (len(seg.frame_indices), h, w)
            if shape not in estimates:
                blank = np.zeros((*shape, 3), np.uint8)
                request = SegmentRequest(
                    prompt=entry.prompt,
                    frames_first=blank,
                    frames_second=blank,
                    start_s=seg.start_s,
                    end_s=seg.end_s,
                )
                estimates[shape] = judge.estimate(request)
            est = estimates[shape]
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
    if judge.model:
        online = estimate_cost(judge.model, totals["input_tokens"], totals["output_tokens"])
        batch = estimate_cost(judge.model, totals["input_tokens"], totals["output_tokens"], batch=True)
        if online is not None:
            lines.append(f"  {'cost_usd':<14}{online:.4f} online, {batch:.4f} with --openai-batch")
        else:
            lines.append(f"  {'cost_usd':<14}unknown model price (self-hosted?)")
    lines += [f"  problem: {p}" for p in problems[:10]]
    return "\n".join(lines)
