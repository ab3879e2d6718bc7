"""Label a manifest on Ray Data: the work on worker actors, OUT written by the driver.

The driver reads the manifest and OUT exactly as a one-process run does (``runner.JobFiles``: pairs
already done are skipped, bad lines recorded), turns the pairs still to do into a Ray Dataset, and
maps it through a fixed pool of :class:`~labeler.runners.ray.worker.PairLabeler` actors. Each chunk of
``pairs_per_worker`` pairs is one Ray task; its rows stream back through ``iter_batches`` in
completion order and the driver appends and flushes them one by one. Ray restarts a killed actor
and runs its unfinished chunk again (``max_restarts``/``max_task_retries``); a chunk's rows reach
the driver only once, when its task succeeds, so every pair lands in OUT exactly once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from labeler.engine import Engine, EngineStats
from labeler.engine_spec import EngineSpec
from labeler.jobfiles import BatchResult, ContentOf, FailureKind, JobFiles
from labeler.ledger import Ledger
from labeler.runners.ray.options import RayOptions
from labeler.runners.ray.worker import PairLabeler
from labeler.schemas import DensePreferenceRecord, ManifestEntry

#: Times Ray runs a chunk again after its actor died (a video that crashes the decoder every time
#: must end the run, not loop forever). Ray restarts the actors themselves without limit.
MAX_TASK_RETRIES = 4


@dataclass
class RayRun:
    """What the driver saw: the job's result, the ledger the actors' counters are summed into
    (the driver engine's: its budgets are the run's), the actors themselves."""

    result: BatchResult
    ledger: Ledger = field(default_factory=Ledger)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)  # "node:pid" -> identity

    @property
    def stats(self) -> EngineStats:
        """The actors' counters, summed."""
        return self.ledger.stats


def connect(options: RayOptions) -> bool:
    """Start or join Ray unless this process already did; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    # No dashboard (nothing here reads it), warnings only; the workers' errors still reach stderr.
    if options.address is None:
        # Reading the manifest's blocks needs CPUs beside the actors' own, or the pool starves it.
        cpus = max(os.cpu_count() or 1, options.workers + 2)
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=options.address, include_dashboard=False, logging_level=logging.WARNING)
    return True


#: What a cascade (labeler.cascade.ray) sends with each pair: the cheap judge's record and the
#: segments to escalate, as JSON (the actor's PairLabeler reads it); None for an ordinary run.
CascadeJob = Callable[[ManifestEntry], str]


def build_dataset(
    todo: list[ManifestEntry], spec: EngineSpec, options: RayOptions, cascade_job: CascadeJob | None = None
) -> Any:
    """The pairs to label, mapped through the actor pool (lazy: nothing runs until iterated)."""
    import ray.data
    from ray.util.annotations import RayDeprecationWarning

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver has its own bar, in pairs
    context.print_on_execution_start = False
    chunk = options.pairs_per_worker
    items: list[dict[str, str]] = [{"entry": e.model_dump_json()} for e in todo]
    if cascade_job is not None:
        for item, entry in zip(items, todo, strict=True):
            item["cascade"] = cascade_job(entry)
    dataset = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / chunk)))
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing actor options as ray_remote_args (removed in 2.64, hence the
        # pin in pyproject.toml) but names no replacement for max_task_retries.
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return _map_through_actors(dataset, spec, options)


def _map_through_actors(dataset: Any, spec: EngineSpec, options: RayOptions) -> Any:
    import ray.data

    chunk = options.pairs_per_worker
    return dataset.map_batches(
        PairLabeler,
        fn_constructor_args=(spec,),
        batch_size=chunk,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.workers, max_tasks_in_flight_per_actor=2),
        num_cpus=1,
        num_gpus=options.gpus_per_worker or None,
        max_restarts=-1,
        max_task_retries=MAX_TASK_RETRIES,
    )


def _write_chunk(job: JobFiles, run: RayRun, rows: dict[str, Any]) -> bool:
    """Write one chunk's rows to OUT / the errors file; True when the run must stop (the run-wide
    budget is checked on the summed counters; each actor also stops at the full budget)."""
    stop = False
    for i, pair_id in enumerate(rows["pair_id"]):
        if rows["stats"][i]:
            run.ledger.add(json.loads(rows["stats"][i]))
            worker = json.loads(rows["worker"][i])
            run.workers[f"{worker['node']}:{worker['pid']}"] = worker
        if rows["budget"][i]:
            job.result.stopped = str(rows["error_message"][i])
            stop = True
            continue
        if rows["record"][i]:
            job.pair_done(DensePreferenceRecord.model_validate_json(rows["record"][i]))
        else:
            error = (str(rows["error_type"][i]), str(rows["error_message"][i]))
            kind = cast(FailureKind, str(rows["failure_kind"][i]))
            stop = job.pair_failed(str(pair_id), error, kind=kind) or stop
        job.tick(run.stats.cache_hits)
    spent = run.ledger.spent()
    if spent and not stop:
        job.result.stopped = spent
    return stop or spent is not None


def run_batch_on_ray(
    manifest: str | Path,
    out: str | Path,
    spec: EngineSpec,
    options: RayOptions,
    *,
    progress: bool = True,
    content: ContentOf | None = None,
    ledger: Ledger | None = None,
    cascade_job: CascadeJob | None = None,
) -> RayRun:
    """Label every pair of ``manifest`` not yet in ``out`` on Ray; returns what happened.
    ``content``: the driver engine's content hashes, to relabel pairs whose files changed.

    Every actor builds its own engine from ``spec`` (``EngineSpec.build``), on its own node. The
    actors' counters are summed into ``ledger`` (the driver engine's; by default a new one with
    ``spec.engine``'s budgets), which stops the run once the actors together spent a budget.
    """
    import ray
    from ray.exceptions import RayError

    job = JobFiles(out, progress=progress)
    if ledger is None:
        ledger = Ledger(budget=spec.engine)
    run = RayRun(job.result, ledger)
    started = False
    try:
        todo = job.todo(manifest, content)
        if todo:
            started = connect(options)
            batches = build_dataset(todo, spec, options, cascade_job).iter_batches(batch_size=None)
            for rows in batches:
                if _write_chunk(job, run, rows):
                    break
    except RayError as exc:  # a chunk failed past its retries, an actor could not start...
        job.result.stopped = f"Ray: {type(exc).__name__}: {str(exc)[:2000]}"
    finally:
        job.close()
        if started:
            ray.shutdown()
    return run


def label_on_ray(
    manifest: Path, out: Path, spec: EngineSpec, engine: Engine, options: RayOptions, quiet: bool
) -> RayRun:
    """The batch CLI's --ray path: ``engine`` is the driver's (it never asks the judge); the
    actors' counters are summed into its ledger, so the summary reads them from ``engine.stats``."""
    try:
        return run_batch_on_ray(
            manifest,
            out,
            spec,
            options,
            progress=not quiet,
            ledger=engine.ledger,
            content=engine.content_hashes,
        )
    finally:
        asyncio.run(engine.aclose())


def describe_workers(run: RayRun) -> str:
    """One summary line: how many actors on how many nodes, and their GPUs."""
    nodes = {w["node"] for w in run.workers.values()}
    gpus = sorted({g for w in run.workers.values() for g in w["gpus"]})
    line = f"ray        {len(run.workers)} worker process(es) on {len(nodes)} node(s)"
    return line + (f", GPUs {', '.join(gpus)}" if gpus else "")
