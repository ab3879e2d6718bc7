"""The Ray Data actor: one judge and one Engine per actor, labeling a chunk of pairs at a time.

Ray Data calls :class:`PairLabeler` with a batch of manifest entries (JSON, one column) and gets
back one row per pair: the record's JSON, or the failure's type and message. The driver writes the
rows to OUT (``labeler.runners.ray.ray_runner``); the actor never touches OUT, so a killed actor loses
nothing but the chunk it was labeling, which Ray runs again on a restarted actor.

Every actor keeps one event loop for its whole life: the engine's semaphores and the judge's HTTP
client belong to it, exactly as in a one-process run's single ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from typing import Any

import numpy as np

from labeler.engine import BudgetExceeded, Engine
from labeler.engine_spec import EngineSpec
from labeler.jobfiles import failure_kind
from labeler.ledger import Ledger
from labeler.runners.ray.cache_policy import refuse_network_cache
from labeler.schemas import DensePreferenceRecord, ManifestEntry

#: The columns of the rows an actor returns; ``stats`` and ``worker`` are filled on a chunk's first row.
OUTCOME_COLUMNS = (
    "pair_id",
    "record",
    "error_type",
    "error_message",
    "failure_kind",
    "budget",
    "stats",
    "worker",
)


class PairLabeler:
    """A Ray Data callable class: built once per actor, called once per chunk of pairs."""

    loop: asyncio.AbstractEventLoop | None = None  # set last in __init__: __del__ closes what was made

    def __init__(self, spec: EngineSpec):
        import ray

        engine = spec.build()
        try:
            refuse_network_cache(engine.cache.directory)
        except ValueError:
            engine.cache.close()
            raise
        self.engine: Engine = engine
        context = ray.get_runtime_context()
        self.identity = json.dumps(
            {
                "node": context.get_node_id(),
                "pid": os.getpid(),
                "gpus": [str(g) for g in ray.get_gpu_ids()],
                "cache": str(engine.cache.directory) if engine.cache.directory else None,
            }
        )
        self.loop = asyncio.new_event_loop()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        entries = [ManifestEntry.model_validate_json(text) for text in batch["entry"]]
        # A cascade's pass 2 (labeler.cascade.ray) sends each pair's cheap record and escalated segments.
        cascades = [str(c) for c in batch["cascade"]] if "cascade" in batch else [""] * len(entries)
        before = dataclasses.asdict(self.engine.stats)
        assert self.loop is not None  # made by __init__
        rows = self.loop.run_until_complete(self._label_all(entries, cascades))
        columns: dict[str, list[Any]] = {name: [row[name] for row in rows] for name in OUTCOME_COLUMNS}
        columns["stats"][0] = json.dumps(Ledger.delta(before, dataclasses.asdict(self.engine.stats)))
        columns["worker"][0] = self.identity
        return columns

    async def _label_all(self, entries: list[ManifestEntry], cascades: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(self._label(e, c) for e, c in zip(entries, cascades, strict=True)))

    async def _label(self, entry: ManifestEntry, cascade: str = "") -> dict[str, Any]:
        row: dict[str, Any] = dict.fromkeys(OUTCOME_COLUMNS, "")
        row.update(pair_id=entry.pair_id, budget=False)
        try:
            if cascade:
                from labeler.cascade.ray import label_cascade_job

                record: DensePreferenceRecord = await label_cascade_job(entry, cascade, self.engine)
            else:
                record = await self.engine.label_pair(entry)
        except BudgetExceeded as exc:
            row.update(budget=True, error_type=type(exc).__name__, error_message=str(exc))
        except Exception as exc:  # this pair's failure goes to the errors file; the chunk goes on
            row.update(
                error_type=type(exc).__name__,
                error_message=str(exc) or repr(exc),
                failure_kind=failure_kind(exc),
            )
        else:
            row["record"] = record.model_dump_json(exclude_none=False)
        return row

    def __del__(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.run_until_complete(self.engine.aclose())
            self.loop.close()
