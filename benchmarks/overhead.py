"""The L = 0 breakdown of the throughput benchmark: where a segment pair's CPU goes.

Each part of the request path is timed in its own pass over the same requests (this process's CPU
clock counts every thread, decoder threads included), the stand-in server's CPU is read from its
process, and a cProfile of the judge calls lists the busiest functions.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import pstats
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.common import StandinProcess, process_cpu_seconds


def make_engine(base_url: str, concurrency: int, judge_options: dict[str, Any]) -> Any:
    """The product's engine with the ``openai`` judge at ``base_url``, no cache."""
    from labeler.cache import JudgmentCache
    from labeler.engine import Engine, EngineConfig
    from labeler.judges.openai_api import OpenAIJudge

    judge = OpenAIJudge(base_url=base_url, **judge_options)
    return Engine(judge, EngineConfig(concurrency=concurrency), JudgmentCache(None))


def _profile_top(profile: cProfile.Profile, calls: int, limit: int = 10) -> list[dict[str, Any]]:
    stats = pstats.Stats(profile)
    # Waiting for the server (epoll) is idle time, not work: leave it out of the CPU profile.
    busy = [kv for kv in stats.stats.items() if "poll" not in kv[0][2] and "select" not in kv[0][2]]  # type: ignore[attr-defined]
    rows = sorted(busy, key=lambda kv: kv[1][2], reverse=True)[:limit]
    out = []
    for (filename, line, func), (_cc, _nc, tottime, cumtime, _callers) in rows:
        where = f"{Path(filename).name}:{line}({func})" if line else func
        out.append(
            {
                "function": where,
                "tottime_ms_per_request": round(tottime / calls * 1000, 3),
                "cumtime_ms_per_request": round(cumtime / calls * 1000, 3),
            }
        )
    return out


def _count_images(body: dict[str, Any]) -> int:
    return sum(
        part.get("type") == "image_url"
        for message in body["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
    )


class _PartProfiler:
    """The passes of :func:`profile_parts` over one set of requests, sharing one event loop."""

    def __init__(self, server: StandinProcess, source: Path, pairs: int, judge_options: dict[str, Any]):
        from labeler.judges.openai_api import OpenAIJudge
        from labeler.judges.prompts import load_prompt
        from labeler.schemas import read_manifest

        self.server = server
        self.engine = make_engine(server.base_url, 8, judge_options)
        self.build_judge = OpenAIJudge(base_url=server.base_url, **judge_options)
        self.prompt = load_prompt(judge_options.get("prompt", "conservative"))
        entries = [e.model_copy(update={"prompt": e.prompt + " (profile)"}) for e in read_manifest(source)]
        self.entries = [entries[i % len(entries)] for i in range(pairs)]
        self.orders = ("ab", "ba") if self.engine.config.swap else ("ab",)
        self.cpu: dict[str, float] = {}
        self.requests: list[Any] = []
        self.segment_pairs = 0
        self.profile = cProfile.Profile()
        self.encoded: list[str] = []
        self.images = 0

    async def decode_all(self) -> None:
        engine = self.engine
        for entry in self.entries:
            plan = engine.plan_pair(entry)
            frames = await engine.decode_segments(plan, plan.segments)
            self.segment_pairs += len(plan.segments)
            for seg in plan.segments:
                for order in self.orders:
                    self.requests.append(
                        engine.segment_request(
                            entry.prompt, seg, frames[seg.index], order, len(plan.segments), plan.fps
                        )
                    )

    async def judge_all(self, profiled: bool = False) -> None:
        for request in self.requests:
            if profiled:
                self.profile.enable()
            await self.engine.judge.judge(request)
            if profiled:
                self.profile.disable()

    def timed(self, part: str, fn: Callable[[], Any]) -> Any:
        start = process_cpu_seconds()
        value = fn()
        self.cpu[part] = process_cpu_seconds() - start
        return value

    async def timed_async(self, part: str, coro: Awaitable[None]) -> None:
        start = process_cpu_seconds()
        await coro
        self.cpu[part] = process_cpu_seconds() - start

    async def measure(self) -> None:
        # One event loop for every pass: the judge's HTTP client belongs to the loop that made it.
        layout = self.build_judge.layout  # the same options as the engine's judge
        await self.timed_async("decode", self.decode_all())
        self.timed("render", lambda: [self.prompt.render(r, layout=layout) for r in self.requests])
        bodies = self.timed("build", lambda: [self.build_judge.build_body(r) for r in self.requests])
        self.encoded = self.timed("json_encode", lambda: [json.dumps(b) for b in bodies])
        self.images = sum(_count_images(b) for b in bodies)
        server0 = self.server.cpu_seconds()
        await self.timed_async("call", self.judge_all())
        server1 = self.server.cpu_seconds()
        if server0 is not None and server1 is not None:
            self.cpu["server"] = server1 - server0
        await self.judge_all(profiled=True)
        await self.engine.aclose()

    def result(self) -> dict[str, Any]:
        cpu = dict(self.cpu)
        build, call = cpu.pop("build"), cpu.pop("call")
        cpu["jpeg_encode"] = max(0.0, build - cpu["render"])
        cpu["sdk_and_http"] = max(0.0, call - build - cpu["json_encode"])
        order = ("decode", "render", "jpeg_encode", "json_encode", "sdk_and_http", "server")
        n, requests = max(self.segment_pairs, 1), max(len(self.requests), 1)
        return {
            "segment_pairs": self.segment_pairs,
            "requests": len(self.requests),
            "images_per_request": round(self.images / requests, 2),
            "body_kb_per_request": round(sum(map(len, self.encoded)) / requests / 1024, 1),
            "cpu_ms_per_pair": {k: round(cpu[k] / n * 1000, 2) for k in order if k in cpu},
            "profile_top": _profile_top(self.profile, requests),
        }


def profile_parts(
    server: StandinProcess, source: Path, *, pairs: int, judge_options: dict[str, Any]
) -> dict[str, Any]:
    """CPU milliseconds per segment pair of each part of the request path, each timed in its own pass
    over the same requests (this process's CPU clock counts every thread, decoders included):

    - decode: ``engine.decode_segments`` (frames of every segment, resized);
    - render: the prompt template into neutral messages;
    - jpeg_encode: ``judge.build_body`` minus render, i.e. JPEG + base64 as the judge does it (a
      fresh judge, so whatever it reuses between the two orders of a segment counts as it would);
    - json_encode: ``json.dumps`` of the body;
    - sdk_and_http: the judge's whole call (another fresh judge) minus the three parts above;
    - server: the stand-in's own CPU seconds over that pass, read from /proc.

    A last pass under cProfile (which slows what it watches, so it is not timed) lists the busiest
    functions of the call."""
    server.control(latency_ms=0, max_concurrency=64, reset=True)
    profiler = _PartProfiler(server, source, pairs, judge_options)
    asyncio.run(profiler.measure())
    return profiler.result()


def overhead_summary(row: dict[str, Any], parts: dict[str, Any]) -> dict[str, Any]:
    """The L = 0 figures: measured rate, the engine's CPU capacity on this machine's cores, and the
    share of each part (the engine's remaining bookkeeping is the client CPU no part accounts for)."""
    per_pair = dict(parts["cpu_ms_per_pair"])
    client_parts = sum(v for k, v in per_pair.items() if k != "server")
    per_pair["engine_rest"] = round(max(0.0, row["client_cpu_ms_per_pair"] - client_parts), 2)
    if row.get("server_cpu_ms_per_pair") is not None:
        per_pair["server"] = row["server_cpu_ms_per_pair"]  # from the concurrent run itself
    total = sum(per_pair.values())
    cores = os.cpu_count() or 1
    return {
        "pairs_per_s": row["pairs_per_s"],
        "engine_capacity_pairs_per_s": round(cores * 1000 / row["client_cpu_ms_per_pair"], 2),
        "cpu_capacity_pairs_per_s": row["cpu_capacity_pairs_per_s"],
        "cpu_ms_per_pair": per_pair,
        "share": {k: round(v / total, 3) for k, v in per_pair.items()} if total else {},
        "dominant": max(per_pair, key=per_pair.__getitem__),
        "body_kb_per_request": parts["body_kb_per_request"],
        "images_per_request": parts["images_per_request"],
        "profile_top": parts["profile_top"],
    }
