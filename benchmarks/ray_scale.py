"""Question: what does labeling on Ray cost, and what does it buy, on this machine?

The same fresh manifest is labeled (openai judge against ``labeler.standin`` in its own process, no
cache, both orders) by the one-process engine (``labeler.runners.local.run_batch``) and by ``--ray`` with 1
and 2 worker actors on a local Ray (``labeler.runners.ray.ray_runner``), at a server latency of 0 (the
client's CPU bounds: decoding, sampling, JPEG, HTTP) and, in the full run, 100 ms (the endpoint's
latency bounds each engine to concurrency / L requests/s).

A Ray run's wall time includes starting its actor pool; the steady rate is measured from the first
record written to the last, by sampling OUT's lines, so it shows the per-pair overhead apart from
the one-off start. ``vs one process`` divides a rate by the one-process engine's rate of the same
latency, measured in the same run. On 2 cores expect about 1x at L = 0: two actors share the two
cores that one process already fills; docs/scale.md models how this grows with nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchmarkError,
    StandinProcess,
    add_common_args,
    default_work_dir,
    markdown_table,
    replicate_manifest,
    report_errors,
    result_envelope,
    video_manifest,
    write_result,
)

NAME = "ray_scale"
CONCURRENCY = 8  # judge requests in flight per engine (the CLI's default)
PAIRS_PER_WORKER = 4  # pairs one engine labels at once (the CLI's default for concurrency 8)


class LineClock:
    """Samples how many lines a file has, to time the first and the last record written."""

    def __init__(self, path: Path) -> None:
        self.path, self.first, self.last, self.lines_at_first = path, 0.0, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        seen = 0
        while not self._stop.is_set():
            lines = self.path.read_bytes().count(b"\n") if self.path.exists() else 0
            if lines > seen:
                now = time.perf_counter()
                if seen == 0:
                    self.first, self.lines_at_first = now, lines
                self.last, seen = now, lines
            time.sleep(0.02)

    def __enter__(self) -> LineClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _argv(base_url: str, ray_workers: int | None) -> list[str]:
    argv = [
        "m.jsonl",
        "--out",
        "o.jsonl",
        "--judge",
        "openai",
        "--model",
        "standin-vlm",
        "--base-url",
        base_url,
    ]
    argv += ["--no-cache", "--concurrency", str(CONCURRENCY), "--workers", str(PAIRS_PER_WORKER)]
    return argv + (["--ray", "--ray-workers", str(ray_workers)] if ray_workers else [])


def label(manifest: Path, out: Path, base_url: str, ray_workers: int | None) -> tuple[Any, int]:
    """One labeling run, one process (``ray_workers`` None) or on Ray; (BatchResult, segments)."""
    from labeler.batch import build_parser
    from labeler.cli_options import engine_from_args, ray_options_from_args, spec_from_args
    from labeler.runners.local import run_batch
    from labeler.runners.ray.ray_runner import run_batch_on_ray

    args = build_parser().parse_args(_argv(base_url, ray_workers))
    engine = engine_from_args(args)
    options = ray_options_from_args(args, PAIRS_PER_WORKER)
    if options is not None:
        asyncio.run(engine.aclose())
        result = run_batch_on_ray(manifest, out, spec_from_args(args), options, progress=False).result
    else:

        async def go() -> Any:
            try:
                return await run_batch(manifest, out, engine, workers=PAIRS_PER_WORKER, progress=False)
            finally:
                await engine.aclose()

        result = asyncio.run(go())
    if result.failed or result.stopped or not result.ok:
        raise BenchmarkError(f"{ray_workers or 'one process'}: {result.failures[:1]} {result.stopped}")
    return result, result.segments


def measure(
    server: StandinProcess, source: Path, work: Path, latency_ms: float, pairs: int, mode: int
) -> dict:
    """One row: ``mode`` 0 is the one-process engine, N > 0 is Ray with N workers."""
    server.control(latency_ms=latency_ms, max_concurrency=64, reset=True)
    tag = f"L{latency_ms:g}-w{mode}-"
    manifest, out = work / f"manifest_{tag}.jsonl", work / f"labels_{tag}.jsonl"
    replicate_manifest(source, manifest, pairs=pairs, tag=tag)
    started = time.perf_counter()
    with LineClock(out) as clock:
        result, segments = label(manifest, out, server.base_url, mode or None)
    wall = time.perf_counter() - started
    per_pair = segments / result.ok
    steady_pairs = result.ok - clock.lines_at_first
    steady_s = clock.last - clock.first
    return {
        "latency_ms": latency_ms,
        "mode": f"ray, {mode} worker{'s' if mode > 1 else ''}" if mode else "one process",
        "ray_workers": mode,
        "segment_pairs": segments,
        "seconds": round(wall, 2),
        "pairs_per_s": round(segments / wall, 2),
        "first_record_s": round(clock.first - started, 2),
        "steady_pairs_per_s": round(steady_pairs * per_pair / steady_s, 2) if steady_s > 0 else None,
    }


def run(
    *, quick: bool = False, pairs: int | None = None, manifest: Path | None = None, work: Path | None = None
) -> dict[str, Any]:
    import ray

    pairs = pairs or (4 if quick else 40)
    latencies = (0.0,) if quick else (0.0, 100.0)
    modes = (0, 2) if quick else (0, 1, 2)  # one process, then Ray with that many workers
    work = (work or default_work_dir()) / NAME
    source = video_manifest(manifest, work.parent)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    t0 = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.WARNING)  # 2 actors + reading tasks
    ray_start = time.perf_counter() - t0
    rows = []
    try:
        with StandinProcess(latency_ms=0) as server:
            for latency in latencies:
                for mode in modes:
                    rows.append(measure(server, source, work, latency, pairs, mode))
    finally:
        ray.shutdown()
    for row in rows:
        base = next(r for r in rows if r["latency_ms"] == row["latency_ms"] and r["ray_workers"] == 0)
        row["vs_one_process"] = round(row["pairs_per_s"] / base["pairs_per_s"], 2)
        steady = row["steady_pairs_per_s"]
        row["steady_vs_one_process"] = round(steady / base["steady_pairs_per_s"], 2) if steady else None
    result = result_envelope(
        NAME,
        {"pairs": pairs, "latencies_ms": list(latencies), "concurrency_per_engine": CONCURRENCY,
         "pairs_per_worker": PAIRS_PER_WORKER, "judge": "openai -> labeler.standin (own process), no cache",
         "manifest": str(source), "quick": quick},
    )  # fmt: skip
    result.update(
        {"ray_init_s": round(ray_start, 2), "rows": rows, "seconds": round(time.perf_counter() - started, 1)}
    )
    return result


def table(result: dict[str, Any]) -> str:
    text = markdown_table(
        result["rows"],
        [("latency_ms", "L (ms)", ".0f"), ("mode", "run", ""), ("segment_pairs", "segment pairs", "d"),
         ("seconds", "wall s", ".1f"), ("first_record_s", "first record s", ".1f"),
         ("pairs_per_s", "segment pairs/s (wall)", ".1f"), ("vs_one_process", "vs one process", ".2f"),
         ("steady_pairs_per_s", "steady segment pairs/s", ".1f"),
         ("steady_vs_one_process", "steady vs one process", ".2f")],
    )  # fmt: skip
    return (
        text
        + f"\n\nStarting the local Ray itself (once per run, not in the rows): {result['ray_init_s']:.1f} s."
    )


@report_errors
def main(argv: list[str] | None = None) -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--pairs", type=int, default=None, help="pairs per run (default 40)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, pairs=args.pairs, manifest=args.manifest, work=args.work)
    print(table(result))
    print(f"-> {write_result(args.out, NAME, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(None))
