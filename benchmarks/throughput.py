"""Question 1: how close does the engine run to what the judge server allows, and what does it cost
on its own?

The engine (``labeler.runners.local.run_batch`` with the ``openai`` judge: the product's batch path) labels a
manifest of demo pairs against ``labeler.standin``, a real OpenAI-compatible server in its own
process, with a simulated latency L per request and a concurrency limit. Little's law bounds what
any client can get: ``min(concurrency, server_limit) / L`` requests per second, halved into segment
pairs because every segment pair is judged in both orders (swap). ``efficiency = measured / bound``.

At L = 0 there is no latency bound: the row measures the engine's own overhead, frame decoding,
JPEG encoding, JSON and HTTP included. CPU seconds of the client and of the server are read apart
(the two processes share the machine's cores), and the parts are timed separately on the same data
to say which one dominates.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchmarkError,
    StandinProcess,
    add_common_args,
    default_work_dir,
    markdown_table,
    process_cpu_seconds,
    replicate_manifest,
    report_errors,
    result_envelope,
    video_manifest,
    write_result,
)
from benchmarks.overhead import make_engine, overhead_summary, profile_parts

NAME = "throughput"
#: (latency ms, engine concurrency, server concurrency limit). 64 is "no tighter than the client".
DEFAULT_GRID = "0:32:64,50:32:64,200:4:64,200:8:64,200:32:64,200:32:16"
QUICK_GRID = "0:8:64,50:8:4"
TARGET_EFFICIENCY = 0.9  # at L = 200 ms, concurrency 32
TARGET_OVERHEAD_PAIRS_PER_S = 50.0  # at L = 0, 2 cores, decoding included


@dataclass(frozen=True)
class Setting:
    latency_ms: float
    concurrency: int
    server_limit: int


def parse_grid(text: str) -> list[Setting]:
    """``"L:c:limit,..."`` -> settings; a clear error naming the bad item."""
    settings = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            latency, concurrency, limit = item.split(":")
            setting = Setting(float(latency), int(concurrency), int(limit))
        except ValueError:
            raise BenchmarkError(f"grid item {item!r} is not LATENCY_MS:CONCURRENCY:SERVER_LIMIT") from None
        if setting.latency_ms < 0 or setting.concurrency < 1 or setting.server_limit < 1:
            raise BenchmarkError(f"grid item {item!r}: latency must be >= 0, concurrency and limit >= 1")
        settings.append(setting)
    if not settings:
        raise BenchmarkError("the grid is empty")
    return settings


def little_bound(setting: Setting, requests_per_pair: int) -> float | None:
    """Segment pairs per second that Little's law allows, or None when L = 0 (no latency bound)."""
    if setting.latency_ms <= 0:
        return None
    requests_per_s = min(setting.concurrency, setting.server_limit) / (setting.latency_ms / 1000)
    return requests_per_s / requests_per_pair


def segments_per_pair(manifest: Path, segment_seconds: float = 1.0) -> float:
    """Mean number of segments of the manifest's pairs (probes A of every pair, decodes nothing)."""
    from labeler.media.video import plan_segments, probe
    from labeler.schemas import read_manifest

    counts = []
    for entry in read_manifest(manifest):
        info = probe(entry.video_a)
        counts.append(len(plan_segments(info.num_frames, info.fps, entry.segment_seconds or segment_seconds)))
    return sum(counts) / len(counts)


def pairs_for(setting: Setting, max_pairs: int, per_pair: float, seconds: float) -> int:
    """Pairs for one setting: ``max_pairs``, or fewer where the Little bound would let them finish in
    well under ``seconds`` anyway (a low bound would otherwise make the row take minutes)."""
    bound = little_bound(setting, requests_per_pair=2)
    if bound is None:
        return max_pairs
    return max(min(4, max_pairs), min(max_pairs, math.ceil(bound * seconds / per_pair)))


def default_workers(concurrency: int) -> int:
    """Pairs in flight: the batch CLI's default (labeler.batch: concurrency / 2, at least 4)."""
    return max(4, concurrency // 2)


async def _run_batch(manifest: Path, out: Path, engine: Any, workers: int) -> Any:
    from labeler.runners.local import run_batch

    try:
        return await run_batch(manifest, out, engine, workers=workers, progress=False)
    finally:
        await engine.aclose()


def run_setting(
    server: StandinProcess, source: Path, setting: Setting, *, pairs: int, work: Path,
    judge_options: dict[str, Any], workers: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Label ``pairs`` fresh pairs (no cache) under one setting; the row of the result table."""
    from labeler.jobfiles import errors_path_for

    server.control(latency_ms=setting.latency_ms, max_concurrency=setting.server_limit, reset=True)
    tag = f"L{setting.latency_ms:g}c{setting.concurrency}s{setting.server_limit}-"
    manifest = work / f"manifest_{tag}.jsonl"
    replicate_manifest(source, manifest, pairs=pairs, tag=tag)
    out = work / f"labels_{tag}.jsonl"
    for stale in (out, errors_path_for(out)):
        stale.unlink(missing_ok=True)
    engine = make_engine(server.base_url, setting.concurrency, judge_options)
    workers = workers or default_workers(setting.concurrency)
    cpu0, server0 = process_cpu_seconds(), server.cpu_seconds()
    result = asyncio.run(_run_batch(manifest, out, engine, workers))
    client_cpu, server_cpu = process_cpu_seconds() - cpu0, server.cpu_seconds()
    if result.failed or not result.ok:
        raise BenchmarkError(f"{setting}: {result.failed} pairs failed, first: {result.failures[:1]}")
    stats = server.stats()
    segments = result.segments
    requests_per_pair = 2 if engine.config.swap else 1
    pairs_per_s = segments / result.seconds
    bound = little_bound(setting, requests_per_pair)
    server_cpu = (server_cpu - server0) if server_cpu is not None and server0 is not None else None
    cpu_per_pair = (client_cpu + (server_cpu or 0.0)) / segments
    cpu_capacity = (os.cpu_count() or 1) / cpu_per_pair
    ceiling = min(bound, cpu_capacity) if bound else cpu_capacity
    return {
        "latency_ms": setting.latency_ms,
        "concurrency": setting.concurrency,
        "server_limit": setting.server_limit,
        "workers": workers,
        "pairs": result.ok,
        "segment_pairs": segments,
        "requests": engine.stats.requests,
        "seconds": round(result.seconds, 3),
        "pairs_per_s": round(pairs_per_s, 2),
        "bound_pairs_per_s": round(bound, 2) if bound else None,
        "efficiency": round(pairs_per_s / bound, 3) if bound else None,
        "server_max_in_flight": stats.get("max_concurrency_observed"),
        "client_cpu_ms_per_pair": round(client_cpu / segments * 1000, 2),
        "server_cpu_ms_per_pair": round(server_cpu / segments * 1000, 2) if server_cpu is not None else None,
        "decode_seconds": round(engine.stats.decode_seconds, 3),
        "cpu_capacity_pairs_per_s": round(cpu_capacity, 2),
        "efficiency_vs_cpu": round(pairs_per_s / ceiling, 3),
        # Share of the machine's cores that client + server got: well below 1 in a CPU-bound row
        # means other processes on the machine took the rest.
        "cpu_share": round(cpu_per_pair * segments / (result.seconds * (os.cpu_count() or 1)), 3),
    }


# --------------------------------------------------------------------------- the benchmark


def run(
    *, quick: bool = False, grid: str | None = None, pairs: int | None = None, manifest: Path | None = None,
    work: Path | None = None, workers: int | None = None, layout: str = "separate", detail: str = "low",
    profile_pairs: int | None = None, seconds: float = 8.0,
) -> dict[str, Any]:  # fmt: skip
    """Every grid setting, then the L = 0 breakdown; the result dict (see the module docstring)."""
    settings = parse_grid(grid or (QUICK_GRID if quick else DEFAULT_GRID))
    pairs = pairs or (4 if quick else 60)
    profile_pairs = profile_pairs or (1 if quick else 6)
    work = (work or default_work_dir()) / NAME
    source = video_manifest(manifest, work.parent)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    judge_options = {"model": "standin-vlm", "layout": layout, "detail": detail}
    per_pair = segments_per_pair(source)
    rows = []
    started = time.perf_counter()
    with StandinProcess(latency_ms=0, max_concurrency=64, policy="hash") as server:
        # Warm-up (imports, first connections, allocator): not measured.
        run_setting(
            server, source, Setting(0, 8, 64), pairs=2, work=work / "warmup", judge_options=judge_options
        )
        for setting in settings:
            n = pairs_for(setting, pairs, per_pair, seconds)
            rows.append(run_setting(server, source, setting, pairs=n, work=work, judge_options=judge_options,
                                    workers=workers))  # fmt: skip
        parts = profile_parts(server, source, pairs=profile_pairs, judge_options=judge_options)
    zero = next((r for r in rows if r["latency_ms"] == 0), None)
    target_row = next(
        (r for r in rows if r["latency_ms"] == 200 and r["concurrency"] == 32 and r["server_limit"] >= 32),
        None,
    )
    result = result_envelope(
        NAME,
        {"grid": [asdict(s) for s in settings], "max_pairs_per_setting": pairs,
         "seconds_per_setting": f"~{seconds:g} at the Little bound", "segments_per_pair": round(per_pair, 2), "judge": "openai (stand-in server)",
         "layout": layout, "detail": detail, "frames_per_segment": 8, "max_side": 448, "swap": True,
         "workers": workers or "max(4, concurrency // 2) (the batch CLI default)", "manifest": str(source),
         "quick": quick},
    )  # fmt: skip
    result["rows"] = rows
    result["overhead"] = overhead_summary(zero, parts) if zero else None
    result["targets"] = {
        "efficiency_at_200ms_c32": target_row["efficiency"] if target_row else None,
        "efficiency_target": TARGET_EFFICIENCY,
        "overhead_pairs_per_s": zero["pairs_per_s"] if zero else None,
        "engine_capacity_pairs_per_s": result["overhead"]["engine_capacity_pairs_per_s"] if zero else None,
        "overhead_target_pairs_per_s": TARGET_OVERHEAD_PAIRS_PER_S,
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


ROW_COLUMNS = [
    ("latency_ms", "L (ms)", "g"),
    ("concurrency", "concurrency", "d"),
    ("server_limit", "server limit", "d"),
    ("pairs_per_s", "segment pairs/s", ".1f"),
    ("bound_pairs_per_s", "Little bound", ".1f"),
    ("efficiency", "efficiency", ".2f"),
    ("server_max_in_flight", "max in flight", "d"),
    ("client_cpu_ms_per_pair", "client CPU ms/pair", ".1f"),
    ("server_cpu_ms_per_pair", "server CPU ms/pair", ".1f"),
    ("cpu_capacity_pairs_per_s", "CPU capacity pairs/s", ".1f"),
    ("efficiency_vs_cpu", "vs min(bound, CPU)", ".2f"),
    ("cpu_share", "cores used", ".0%"),
]


def bound_note(result: dict[str, Any]) -> str:
    """What bounds the target row (L = 200 ms, c = 32): the latency or the CPU, in numbers."""
    row = next(
        (
            r
            for r in result["rows"]
            if r["latency_ms"] == 200 and r["concurrency"] == 32 and r["server_limit"] >= 32
        ),
        None,
    )
    if row is None:
        return ""
    cores = result["machine"]["cpu_count"] or 1
    needed_ms = cores / (TARGET_EFFICIENCY * row["bound_pairs_per_s"]) * 1000
    total_ms = row["client_cpu_ms_per_pair"] + (row["server_cpu_ms_per_pair"] or 0.0)
    engine_capacity = cores * 1000 / row["client_cpu_ms_per_pair"]
    verdict = "CPU-bound" if row["cpu_capacity_pairs_per_s"] < row["bound_pairs_per_s"] else "latency-bound"
    return (
        f"\n\nL = 200 ms, c = 32 is **{verdict}**: the Little bound is {row['bound_pairs_per_s']:.0f} segment "
        f"pairs/s; {TARGET_EFFICIENCY:g} of it needs at most {needed_ms:.1f} CPU ms per segment pair on {cores} "
        f"cores, and the run spent {total_ms:.1f} ({row['client_cpu_ms_per_pair']:.1f} client + "
        f"{row['server_cpu_ms_per_pair'] or 0:.1f} server): a ceiling of {row['cpu_capacity_pairs_per_s']:.0f}/s with the "
        f"server on the same cores, {engine_capacity:.0f}/s for the engine alone."
    )


def table(result: dict[str, Any]) -> str:
    """The markdown tables of a result: the grid, then the L = 0 breakdown."""
    text = markdown_table(result["rows"], ROW_COLUMNS) + bound_note(result)
    overhead = result.get("overhead")
    if overhead:
        parts = [
            {"part": k, "ms": v, "share": overhead["share"].get(k)}
            for k, v in overhead["cpu_ms_per_pair"].items()
        ]
        text += (
            f"\n\nL = 0: {overhead['pairs_per_s']:.1f} segment pairs/s measured (server on the same cores); "
            f"the engine's own CPU allows {overhead['engine_capacity_pairs_per_s']:.1f} segment pairs/s on "
            f"{result['machine']['cpu_count']} cores; dominant part: **{overhead['dominant']}**. "
            f"Each request carries {overhead['images_per_request']:g} images in a "
            f"{overhead['body_kb_per_request']:g} kB JSON body.\n\n"
        )
        text += markdown_table(parts, [("part", "part (L = 0)", ""), ("ms", "CPU ms per segment pair", ".2f"),
                                       ("share", "share", ".1%")])  # fmt: skip
    return text


@report_errors
def main(argv: list[str] | None = None) -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument(
        "--grid", default=None, help=f"LATENCY_MS:CONCURRENCY:SERVER_LIMIT,... (default {DEFAULT_GRID})"
    )
    parser.add_argument("--pairs", type=int, default=None, help="pairs labeled per setting (default 60)")
    parser.add_argument("--workers", type=int, default=None, help="pairs in flight (default: the CLI's)")
    parser.add_argument("--layout", default="separate", choices=["separate", "side-by-side"])
    parser.add_argument("--detail", default="low", choices=["low", "high", "auto"])
    args = parser.parse_args(argv)
    result = run(quick=args.quick, grid=args.grid, pairs=args.pairs, manifest=args.manifest, work=args.work,
                 workers=args.workers, layout=args.layout, detail=args.detail)  # fmt: skip
    print(table(result))
    print(f"-> {write_result(args.out, NAME, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
