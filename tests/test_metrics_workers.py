"""The metrics judge's worker processes survive a worker's death: a process killed (by the OOM
killer, by hand) breaks Python's whole ProcessPoolExecutor, and without care every later segment
of the run would fail. These tests kill real worker processes with SIGKILL."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal

import pytest

from labeler.engine import Engine
from labeler.engine_types import EngineConfig
from labeler.judges.metrics.judge import MAX_POOL_RESTARTS, MetricsJudge
from labeler.schemas import FatalJudgeError, Judgment, SegmentRequest, TransientJudgeError
from tests.conftest import textured_frames

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def _request(seed: int) -> SegmentRequest:
    clean = textured_frames(6, 64, 96, seed=seed)
    noisy = clean.astype(int) + (seed % 5 + 4) * textured_frames(6, 64, 96, seed=seed + 100) // 64
    return SegmentRequest("p", clean, noisy.clip(0, 255).astype("uint8"), 0.0, 1.0)


async def _kill_workers(judge: MetricsJudge, before: set[int | None]) -> int:
    """SIGKILL every started worker process of ``judge`` (children not in ``before``)."""
    while not await judge.ready():
        await asyncio.sleep(0.05)
    pids = {p.pid for p in multiprocessing.active_children()} - before
    assert pids, "the judge's workers should be running"
    for pid in pids:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def test_a_killed_worker_fails_one_attempt_and_the_next_runs_in_fresh_workers():
    before = {p.pid for p in multiprocessing.active_children()}
    req = _request(1)
    expected = MetricsJudge().score(req)
    judge = MetricsJudge(processes=1)

    async def run() -> Judgment:
        try:
            assert await judge.judge(req) == expected
            await _kill_workers(judge, before)
            with pytest.raises(TransientJudgeError, match="worker process died"):
                await judge.judge(_request(2))
            return await judge.judge(req)  # a fresh pool answers, the same answer
        finally:
            await judge.aclose()

    assert asyncio.run(run()) == expected
    assert not {p.pid for p in multiprocessing.active_children()} - before  # the old and new pools stopped


def test_the_engine_retries_a_segment_whose_worker_died_and_loses_nothing():
    before = {p.pid for p in multiprocessing.active_children()}
    req = _request(3)
    expected = MetricsJudge().score(req)
    judge = MetricsJudge(processes=1)
    engine = Engine(judge, EngineConfig(backoff_initial=0.01, backoff_max=0.05))

    async def run() -> Judgment:
        try:
            await _kill_workers(judge, before)
            return await engine.ask(req)
        finally:
            await judge.aclose()

    assert asyncio.run(run()) == expected
    assert engine.stats.retries == 1


def test_workers_that_keep_dying_make_the_judge_give_up_with_a_fatal_error():
    """A segment that kills every worker, or a machine that cannot keep them: after
    MAX_POOL_RESTARTS fresh pools without one answer the judge stops restarting, and every later
    request fails fast with a FatalJudgeError (a run stops after a few such pairs; rerun it)."""
    before = {p.pid for p in multiprocessing.active_children()}
    judge = MetricsJudge(processes=1)

    async def run() -> None:
        try:
            for attempt in range(MAX_POOL_RESTARTS):
                await _kill_workers(judge, before)
                with pytest.raises(TransientJudgeError):
                    await judge.judge(_request(10 + attempt))
            await _kill_workers(judge, before)
            with pytest.raises(FatalJudgeError, match=r"died 4 times in a row.*--judge-processes 0"):
                await judge.judge(_request(20))
            with pytest.raises(FatalJudgeError, match="died 4 times"):  # no fifth pool is started
                await judge.judge(_request(21))
            assert not {p.pid for p in multiprocessing.active_children()} - before
        finally:
            await judge.aclose()

    asyncio.run(run())


def test_an_answer_between_deaths_resets_the_count():
    before = {p.pid for p in multiprocessing.active_children()}
    judge = MetricsJudge(processes=1)

    async def run() -> None:
        try:
            for round_ in range(MAX_POOL_RESTARTS + 2):
                await _kill_workers(judge, before)
                with pytest.raises(TransientJudgeError):
                    await judge.judge(_request(30 + round_))
                await judge.judge(_request(40 + round_))  # answered: the count starts again
        finally:
            await judge.aclose()

    asyncio.run(run())


def test_a_worker_killed_while_measuring_fails_that_attempt_and_the_retry_answers():
    """The out-of-memory case: the worker dies in the middle of a segment (a large one, so it is
    still measuring when the kill comes), the engine's retry measures it in fresh workers."""
    before = {p.pid for p in multiprocessing.active_children()}
    clean = textured_frames(12, 540, 960, seed=5)
    req = SegmentRequest("p", clean, clean[::-1].copy(), 0.0, 1.0)
    judge = MetricsJudge(processes=1)

    async def run() -> Judgment:
        try:
            while not await judge.ready():
                await asyncio.sleep(0.05)
            measuring = asyncio.ensure_future(judge.judge(req))
            await asyncio.sleep(0.15)  # the frames are in shared memory, the worker is measuring
            assert not measuring.done()
            await _kill_workers(judge, before)
            with pytest.raises(TransientJudgeError, match="worker process died"):
                await measuring
            return await judge.judge(req)
        finally:
            await judge.aclose()

    assert asyncio.run(run()) == MetricsJudge().score(req)
    assert not {p.pid for p in multiprocessing.active_children()} - before
