"""Question 2: how fast is a fully cached rerun of a manifest?

Every judgment of a manifest is put in a fresh judgment cache first (keys from ``engine.plan_pair``,
the engine's own keys; the answers themselves do not matter here), then ``run_batch`` labels the
manifest into a new output file with a new engine on that cache directory, as a rerun of a labeled
manifest would. The run must send no request and decode no frame (checked: the judge points at a
closed port, so a single cache miss would fail its pair), and the probe results and content hashes
come from the cache too. Reported: labeled segment pairs per second, the median of a few reruns, and
the CPU split between planning (cache keys), cache lookups and the rest (records, files, asyncio),
and what the videos' content-hash identity costs: the memo against hashing every run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchmarkError,
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

NAME = "cache"
TARGET_PAIRS_PER_S = 1000.0
#: Nothing listens here: a judge that is ever called fails its pair, and the benchmark says so.
DEAD_URL = "http://127.0.0.1:9/v1"


def _engine(cache_dir: Path) -> Any:
    from labeler.cache import JudgmentCache
    from labeler.engine import Engine, EngineConfig
    from labeler.judges.openai_api import OpenAIJudge

    judge = OpenAIJudge("standin-vlm", base_url=DEAD_URL, max_parse_retries=0)
    return Engine(judge, EngineConfig(max_attempts=1), JudgmentCache(cache_dir))


def _judgment_for(key: str) -> Any:
    from labeler.schemas import Judgment, Label

    digest = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    label: Label = ("A", "B", "tie")[digest % 3]
    probs = {"A": 0.1, "B": 0.1, "tie": 0.1, label: 0.8}
    return Judgment(
        label=label, p_a=probs["A"], p_b=probs["B"], p_tie=probs["tie"], rationale="primed for the cache benchmark",
        raw="{}", input_tokens=1000, output_tokens=30, model="standin-vlm", prob_source="logprobs",
    )  # fmt: skip


def prime(manifest: Path, cache_dir: Path) -> tuple[int, list[Any]]:
    """Fill ``cache_dir`` with a judgment for every (segment, order) of the manifest; returns the
    number of segment pairs and the plans (their keys feed the lookup timing)."""
    from labeler.schemas import read_manifest

    engine = _engine(cache_dir)
    plans = []
    for entry in read_manifest(manifest):
        plan = engine.plan_pair(entry)
        for seg in plan.segments:
            for key in seg.keys.values():
                engine.cache.set(key, _judgment_for(key))
        plans.append(plan)
    engine.cache.close()
    return sum(len(p.segments) for p in plans), plans


def rerun(manifest: Path, cache_dir: Path, out: Path) -> dict[str, Any]:
    """One fully cached ``run_batch`` into a fresh output; its figures."""
    from labeler.jobfiles import errors_path_for
    from labeler.runners.local import run_batch

    for stale in (out, errors_path_for(out)):
        stale.unlink(missing_ok=True)
    engine = _engine(cache_dir)
    workers = max(4, engine.config.concurrency // 2)  # the batch CLI's default

    async def go() -> Any:
        try:
            return await run_batch(manifest, out, engine, workers=workers, progress=False)
        finally:
            await engine.aclose()

    cpu = process_cpu_seconds()
    result = asyncio.run(go())
    cpu = process_cpu_seconds() - cpu
    stats = engine.stats
    if result.failed or stats.requests or stats.decode_seconds:
        raise BenchmarkError(
            f"the rerun was not fully cached: {result.failed} failed pairs, {stats.requests} requests, "
            f"{stats.decode_seconds:.3f} s decoding (first failure: {result.failures[:1]})"
        )
    return {
        "pairs": result.ok,
        "segment_pairs": result.segments,
        "cache_hits": stats.cache_hits,
        "seconds": result.seconds,
        "cpu_seconds": cpu,
        "workers": workers,
    }


def time_parts(manifest: Path, cache_dir: Path, plans: list[Any]) -> dict[str, float]:
    """CPU ms per segment pair of planning (probe/hash lookups + key hashing) and of the engine's
    cache lookups (a membership test, then a read, per key), timed apart on the same manifest."""
    from labeler.schemas import read_manifest

    engine = _engine(cache_dir)
    entries = read_manifest(manifest)
    segments = sum(len(p.segments) for p in plans)
    start = process_cpu_seconds()
    for entry in entries:
        engine.plan_pair(entry)
    plan_cpu = process_cpu_seconds() - start
    start = process_cpu_seconds()
    for plan in plans:
        for seg in plan.segments:
            for key in seg.keys.values():
                if key in engine.cache:
                    engine.cache.get(key)
    lookup_cpu = process_cpu_seconds() - start
    engine.cache.close()
    return {"plan": plan_cpu / segments * 1000, "cache_lookups": lookup_cpu / segments * 1000}


def identity_cost(manifest: Path, cache_dir: Path) -> dict[str, float]:
    """CPU that the content-hash identity of the videos costs a rerun (#15 item 5), per manifest pair:
    the engine's memo (a stat, and two small cache reads keyed by path, size, mtime, inode and
    ctime) against hashing both videos' bytes on every run, the other safe choice."""
    from labeler.schemas import read_manifest

    engine = _engine(cache_dir)
    entries = read_manifest(manifest)
    start = time.process_time()
    for entry in entries:
        engine.video_meta(entry.video_a)
        engine.video_meta(entry.video_b)
    memo = (time.process_time() - start) / len(entries)
    engine.cache.close()
    start, size = time.process_time(), 0
    for entry in entries:
        for path in (entry.video_a, entry.video_b):
            digest = hashlib.sha256()
            with open(path, "rb") as fh:  # what video.file_hash does without its memo
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
    rehash = (time.process_time() - start) / len(entries)
    return {
        "memo_cpu_ms_per_pair": round(memo * 1000, 4),
        "rehash_cpu_ms_per_pair": round(rehash * 1000, 4),
        "rehash_over_memo": round(rehash / memo, 1) if memo > 0 else float("inf"),
        "video_bytes_per_pair": size // len(entries),
    }


def run(
    *, quick: bool = False, pairs: int | None = None, repeats: int | None = None, manifest: Path | None = None,
    work: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    pairs = pairs or (6 if quick else 400)
    repeats = repeats or (1 if quick else 3)
    work = (work or default_work_dir()) / NAME
    source = video_manifest(manifest, work.parent)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    replicated = work / "manifest.jsonl"
    replicate_manifest(source, replicated, pairs=pairs, tag="cache-")
    cache_dir = work / "judgments"
    segments, plans = prime(replicated, cache_dir)
    runs = [rerun(replicated, cache_dir, work / f"labels_{i}.jsonl") for i in range(repeats)]
    rates = [r["segment_pairs"] / r["seconds"] for r in runs]
    cpu_per_pair = statistics.median(r["cpu_seconds"] / r["segment_pairs"] for r in runs) * 1000
    parts = time_parts(replicated, cache_dir, plans)
    parts["engine_rest"] = max(0.0, cpu_per_pair - sum(parts.values()))
    identity = identity_cost(replicated, cache_dir)
    result = result_envelope(
        NAME,
        {"pairs": pairs, "repeats": repeats, "workers": runs[0]["workers"], "manifest": str(source),
         "judge": "openai (never called)", "cache": "diskcache (labeler.cache.JudgmentCache)", "quick": quick},
    )  # fmt: skip
    result.update(
        {
            "pairs_per_s": round(statistics.median(rates), 1),
            "manifest_pairs_per_s": round(statistics.median(r["pairs"] / r["seconds"] for r in runs), 1),
            "segment_pairs": segments,
            "runs": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in runs],
            "cpu_ms_per_pair": round(cpu_per_pair, 3),
            "cpu_capacity_pairs_per_s": round((os.cpu_count() or 1) / cpu_per_pair * 1000, 1),
            "parts_cpu_ms_per_pair": {k: round(v, 3) for k, v in parts.items()},
            "video_identity": identity,
            "requests": 0,
            "decode_seconds": 0.0,
            "target_pairs_per_s": TARGET_PAIRS_PER_S,
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    return result


def table(result: dict[str, Any]) -> str:
    row = {
        "segment_pairs": result["segment_pairs"],
        "pairs_per_s": result["pairs_per_s"],
        "manifest_pairs_per_s": result["manifest_pairs_per_s"],
        "cpu_ms_per_pair": result["cpu_ms_per_pair"],
        "cpu_capacity_pairs_per_s": result["cpu_capacity_pairs_per_s"],
        "target": result["target_pairs_per_s"],
    }
    text = markdown_table(
        [row],
        [("segment_pairs", "segment pairs", "d"), ("pairs_per_s", "segment pairs/s", ".0f"),
         ("manifest_pairs_per_s", "manifest pairs/s", ".0f"), ("cpu_ms_per_pair", "CPU ms/segment pair", ".3f"),
         ("cpu_capacity_pairs_per_s", "CPU capacity pairs/s", ".0f"), ("target", "target", ".0f")],
    )  # fmt: skip
    parts = [{"part": k, "ms": v} for k, v in result["parts_cpu_ms_per_pair"].items()]
    text += "\n\n" + markdown_table(parts, [("part", "part", ""), ("ms", "CPU ms per segment pair", ".3f")])
    ident = result.get("video_identity")  # results written before the content-hash memo lack it
    if ident:
        text += (
            f"\n\nVideo identity per manifest pair: the content-hash memo costs {ident['memo_cpu_ms_per_pair']:.3f} CPU ms; "
            f"hashing both videos ({ident['video_bytes_per_pair'] / 1e6:.1f} MB) on every run would cost "
            f"{ident['rehash_cpu_ms_per_pair']:.3f} ms ({ident['rehash_over_memo']:.0f}x)."
        )
    return text


@report_errors
def main(argv: list[str] | None = None) -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--pairs", type=int, default=None, help="pairs in the manifest (default 400)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="cached reruns, median reported (default 3)"
    )
    args = parser.parse_args(argv)
    result = run(
        quick=args.quick, pairs=args.pairs, repeats=args.repeats, manifest=args.manifest, work=args.work
    )
    print(table(result))
    print(f"-> {write_result(args.out, NAME, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
