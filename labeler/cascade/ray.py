"""The cascade on Ray (``labeler.batch --ray ... --cascade-from metrics``): both passes of
labeler.cascade.runner, each as an ordinary Ray run (labeler.runners.ray).

Pass 1 labels every pair with the cheap judge into ``OUT.cheap.jsonl`` on the actors; the driver
ranks all the cheap labels (the same choice as a one-process cascade); pass 2 sends each pair with
its cheap record and escalated segments to the actors, which ask the main judge about those only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

from labeler.cascade.policy import EscalationRule, choose_escalated
from labeler.cascade.runner import (
    CascadeResult,
    cascade_info,
    cascade_totals,
    cheap_path_for,
    escalate,
    read_cheap_labels,
)
from labeler.engine import Engine
from labeler.engine_spec import EngineSpec
from labeler.errors import CheapLabelMissing
from labeler.judge_config import JudgeConfig
from labeler.runners.local import BatchResult
from labeler.runners.ray.options import RayOptions
from labeler.schemas import DensePreferenceRecord, ManifestEntry


def cheap_spec(spec: EngineSpec, source: str) -> EngineSpec:
    """What each pass-1 actor builds its engine from: the cheap judge with its defaults, the main
    run's segmenting and cache, no budgets (they limit the main judge), no worker processes (an
    actor is one)."""
    engine = dataclasses.replace(spec.engine, max_requests=None, max_cost=None)
    return dataclasses.replace(spec, judge=JudgeConfig(judge=source, judge_processes=0), engine=engine)


async def label_cascade_job(entry: ManifestEntry, job: str, engine: Engine) -> DensePreferenceRecord:
    """Pass 2 in an actor: the pair's record from its cheap record and escalated segments."""
    data = json.loads(job)
    if "missing" in data:
        raise CheapLabelMissing(str(data["missing"]))
    cheap = DensePreferenceRecord.model_validate(data["cheap"])
    return await escalate(entry, cheap, set(data["indices"]), engine, data["info"])


def run_cascade_on_ray(
    manifest: Path,
    out: Path,
    spec: EngineSpec,
    engine: Engine,
    options: RayOptions,
    rule: EscalationRule,
    source: str,
    *,
    quiet: bool,
) -> CascadeResult:
    """Both passes. ``spec`` is what pass-2 actors build (the main judge); ``engine`` is the driver's
    (it never asks the judge; its ledger sums the pass-2 actors' counters); ``source`` names the
    cheap judge."""
    from labeler.runners.ray.ray_runner import run_batch_on_ray

    cheap_file = cheap_path_for(out)
    try:
        first = run_batch_on_ray(manifest, cheap_file, cheap_spec(spec, source), options, progress=not quiet)
        cheap = read_cheap_labels(cheap_file, manifest)
        escalation = choose_escalated(cheap.values(), rule)
        if first.result.stopped:
            stopped = BatchResult(stopped=first.result.stopped)
            return CascadeResult(first.result, stopped, escalation, cheap_file, rule)
        chosen, info = escalation.by_pair(), cascade_info(rule, escalation)
        errors = first.result.errors_file

        def job(entry: ManifestEntry) -> str:
            record = cheap.get(entry.pair_id)
            if record is None:
                missing = f"the cheap judge ({source}) has no label for this pair (see {errors})"
                return json.dumps({"missing": missing})
            indices = sorted(chosen.get(entry.pair_id, set()))
            return json.dumps({"cheap": record.model_dump(mode="json"), "indices": indices, "info": info})

        second = run_batch_on_ray(
            manifest, out, spec, options, progress=not quiet, ledger=engine.ledger, cascade_job=job
        )
        result = CascadeResult(first.result, second.result, escalation, cheap_file, rule)
        result.totals = cascade_totals(out, cheap, engine)
        return result
    finally:
        asyncio.run(engine.aclose())
