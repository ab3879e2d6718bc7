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
    from labeler.judges.openai_api import OpenAIJudge
    from labeler.judges.prompts import load_prompt
    from labeler.schemas import read_manifest

    server.control(latency_ms=0, max_concurrency=64, reset=True)
    engine = make_engine(server.base_url, 8, judge_options)
    judge = engine.judge
    build_judge = OpenAIJudge(base_url=server.base_url, **judge_options)
    prompt = load_prompt(judge_options.get("prompt", "conservative"))
    entries = [e.model_copy(update={"prompt": e.prompt + " (profile)"}) for e in read_manifest(source)]
    entries = [entries[i % len(entries)] for i in range(pairs)]
    orders = ("ab", "ba") if engine.config.swap else ("ab",)
    cpu: dict[str, float] = {}
    requests: list[Any] = []
    segment_pairs = 0
    profile = cProfile.Profile()
    encoded: list[str] = []
    images: list[int] = []

    async def decode_all() -> None:
        nonlocal segment_pairs
        for entry in entries:
            plan = engine.plan_pair(entry)
            frames = await engine.decode_segments(plan, plan.segments)
            segment_pairs += len(plan.segments)
            for seg in plan.segments:
                for order in orders:
                    requests.append(
                        engine.segment_request(
                            entry.prompt, seg, frames[seg.index], order, len(plan.segments), plan.fps
                        )
                    )

    async def judge_all(use: Any, profiled: bool = False) -> None:
        for request in requests:
            if profiled:
                profile.enable()
            await use.judge(request)
            if profiled:
                profile.disable()

    def timed(part: str, fn: Any) -> Any:
        start = process_cpu_seconds()
        value = fn()
        cpu[part] = process_cpu_seconds() - start
        return value

    async def timed_async(part: str, coro: Any) -> None:
        start = process_cpu_seconds()
        await coro
        cpu[part] = process_cpu_seconds() - start

    async def measure() -> None:
        # One event loop for every pass: the judge's HTTP client belongs to the loop that made it.
        await timed_async("decode", decode_all())
        timed("render", lambda: [prompt.render(r, layout=judge.layout) for r in requests])
        bodies = timed("build", lambda: [build_judge.build_body(r) for r in requests])
        encoded.extend(timed("json_encode", lambda: [json.dumps(b) for b in bodies]))
        images.append(sum(_count_images(b) for b in bodies))
        server0 = server.cpu_seconds()
        await timed_async("call", judge_all(judge))
        server1 = server.cpu_seconds()
        if server0 is not None and server1 is not None:
            cpu["server"] = server1 - server0
        await judge_all(judge, profiled=True)
        await engine.aclose()

    asyncio.run(measure())
    build, call = cpu.pop("build"), cpu.pop("call")
    cpu["jpeg_encode"] = max(0.0, build - cpu["render"])
    cpu["sdk_and_http"] = max(0.0, call - build - cpu["json_encode"])
    order = ("decode", "render", "jpeg_encode", "json_encode", "sdk_and_http", "server")
    n = max(segment_pairs, 1)
    return {
        "segment_pairs": segment_pairs,
        "requests": len(requests),
        "images_per_request": round(images[0] / max(len(requests), 1), 2),
        "body_kb_per_request": round(sum(map(len, encoded)) / max(len(requests), 1) / 1024, 1),
        "cpu_ms_per_pair": {k: round(cpu[k] / n * 1000, 2) for k in order if k in cpu},
        "profile_top": _profile_top(profile, max(len(requests), 1)),
    }


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
