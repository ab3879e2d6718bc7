"""Run every benchmark, write their JSON files into one folder, and regenerate the README's tables.

    python -m benchmarks.run_all --out benchmarks/results/            # a few minutes on 2 cores
    python -m benchmarks.run_all --out DIR --quick                    # the smoke test's settings
    python -m benchmarks.run_all --out benchmarks/results/ --readme-only   # tables from existing JSON

The README's numbers come only from here: each table sits between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` and is rewritten from ``benchmarks/results/name.json`` by the benchmark's own
``table()``. Only a run whose ``--out`` is ``benchmarks/results/`` rewrites the tracked README, so a
benchmark run elsewhere leaves the checkout clean; ``--readme FILE`` names another README to write.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.common import BenchmarkError, add_common_args, load_module, report_errors, write_result

#: In running order: torch (trainer_step) is imported last, after the timing-sensitive ones.
BENCHMARKS = ("throughput", "cache", "cost", "decode", "judge_quality", "ray_scale", "trainer_step")
DEFAULT_README = Path(__file__).with_name("README.md")
RESULTS_DIR = Path(__file__).with_name("results")


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def summary(results: dict[str, dict[str, Any]]) -> str:
    """The headline figures against the issue's targets, from whichever results exist."""
    lines = ["| question | figure | target | met |", "|---|---|---|---|"]

    def add(question: str, figure: str, target: str, met: bool | None) -> None:
        lines.append(
            f"| {question} | {figure} | {target} | {'–' if met is None else 'yes' if met else 'no'} |"
        )

    if tp := results.get("throughput"):
        t = tp["targets"]
        eff = t["efficiency_at_200ms_c32"]
        row = next((r for r in tp["rows"] if r["latency_ms"] == 200 and r["concurrency"] == 32
                    and r["server_limit"] >= 32), None)  # fmt: skip
        extra = f" ({_fmt(row['efficiency_vs_cpu'], '.2f')} of min(bound, CPU capacity))" if row else ""
        add("throughput, L = 200 ms, c = 32", f"efficiency {_fmt(eff, '.2f')}{extra}", f">= {t['efficiency_target']}",
            None if eff is None else eff >= t["efficiency_target"])  # fmt: skip
        over = tp.get("overhead") or {}
        cap = t["engine_capacity_pairs_per_s"]
        add("engine overhead, L = 0", f"{_fmt(t['overhead_pairs_per_s'], '.1f')} segment pairs/s measured (server "
            f"and other jobs on the same cores); the engine's own CPU allows {_fmt(cap, '.1f')}/s on "
            f"{tp['machine']['cpu_count']} cores; dominant: {over.get('dominant', '–')}",
            f">= {t['overhead_target_pairs_per_s']:g}/s", None if cap is None else cap >= t["overhead_target_pairs_per_s"])  # fmt: skip
    if cache := results.get("cache"):
        add("fully cached rerun", f"{cache['pairs_per_s']:,.0f} segment pairs/s", f">= {cache['target_pairs_per_s']:,.0f}/s",
            cache["pairs_per_s"] >= cache["target_pairs_per_s"])  # fmt: skip
    if cost := results.get("cost"):
        # The judge's defaults (separate frames, detail low) on the generated-video geometry.
        for model in ("gpt-4o", "gpt-4o-mini"):
            row = next((r for r in cost["rows"] if r["geometry"].startswith("480p") and r["model"] == model
                        and r["layout"] == "separate" and r["detail"] == "low"), None)  # fmt: skip
            ten_k = next((r for r in cost["scenario_rows"] if r["geometry"].startswith("480p")
                          and r["model"] == model and r["layout"] == "separate" and r["detail"] == "low"), None)  # fmt: skip
            if row and ten_k and row["usd"] is not None:
                add(f"cost per segment pair, {model} (separate, low, 480p)",
                    f"${row['usd']:.4f} (${row['usd_batch']:.4f} Batch API); 10k pairs of 5 s: "
                    f"${ten_k['dense_usd']:,.0f} dense vs ${ten_k['video_usd']:,.0f} video-level", "–", None)  # fmt: skip
    if dec := results.get("decode"):
        add("decode, sampler vs every frame", f"{dec['speedup']:.2f}x faster ({dec['sampled_share']:.0%} of the frames)",
            "–", None)  # fmt: skip
    if jq := results.get("judge_quality"):
        for row in (r for r in jq["rows"] if r["set"] == "generated_heldout"):
            acc, ties, t = row["accuracy_no_ties"], row["tie_recall"], jq["targets"]
            add(f"metrics judge, held-out generation-like pairs, {'with' if row['reference'] else 'no'} reference",
                f"accuracy {acc:.3f}, tie recall {_fmt(ties, '.3f')}, ECE {_fmt(row['ece'], '.3f')}, "
                f"{row['pairs_per_s']:.1f} segment pairs/s wall, {_fmt(row['pairs_per_cpu_s'], '.1f')} per CPU-second", f">= {t['accuracy_no_ties']}, >= {t['tie_recall']}",
                acc >= t["accuracy_no_ties"] and ties is not None and ties >= t["tie_recall"])  # fmt: skip
    if ts := results.get("trainer_step"):
        add("trainer step, dense / vanilla", f"{ts['dense_over_vanilla']:.3f} (medians), {ts['dense_over_vanilla_min']:.3f} (minima)",
            f"<= {ts['target_ratio']}", ts["dense_over_vanilla"] <= ts["target_ratio"])  # fmt: skip
    return "\n".join(lines)


def provenance(result: dict[str, Any], name: str) -> str:
    machine = result.get("machine", {})
    load = machine.get("load_average")
    return (
        f"<sub>`{name}.json`, {result.get('date', '?')}, {machine.get('cpu_count', '?')} × {machine.get('cpu_model', '?')}"
        f"{f', load average {load[0]:g}' if load else ''}; densepref {result.get('versions', {}).get('densepref', '?')}"
        f"{', QUICK settings' if result.get('settings', {}).get('quick') else ''}.</sub>"
    )


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the block between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` replaced."""
    pattern = re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n).*?(<!-- END {re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise BenchmarkError(f"the README has no <!-- BEGIN {name} --> ... <!-- END {name} --> block")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text, count=1)


def load_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for name in BENCHMARKS:
        path = results_dir / f"{name}.json"
        if path.is_file():
            out[name] = json.loads(path.read_text(encoding="utf-8"))
    return out


def update_readme(readme: Path, results_dir: Path) -> list[str]:
    """Rewrite the README's tables from the JSON files in ``results_dir``; returns the names updated."""
    results = load_results(results_dir)
    text = readme.read_text(encoding="utf-8")
    for name, result in results.items():
        text = replace_block(text, name, load_module(name).table(result) + "\n\n" + provenance(result, name))
    text = replace_block(text, "summary", summary(results))
    readme.write_text(text, encoding="utf-8")
    return list(results)


def readme_to_update(readme: Path | None, out: Path, no_readme: bool) -> Path | None:
    """The README to rewrite: the one named, else the tracked one when ``out`` is its results folder."""
    if no_readme:
        return None
    if readme is not None:
        return readme
    return DEFAULT_README if Path(out).resolve() == RESULTS_DIR.resolve() else None


@report_errors
def main(argv: list[str] | None = None) -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="README whose tables to regenerate from --out's JSON (default: benchmarks/README.md, "
        "and only when --out is benchmarks/results/)",
    )
    parser.add_argument("--no-readme", action="store_true", help="leave every README alone")
    parser.add_argument(
        "--readme-only", action="store_true", help="only regenerate the tables from --out's JSON"
    )
    args = parser.parse_args(argv)
    names = BENCHMARKS if not args.only else tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    failed = []
    if not args.readme_only:
        started = time.perf_counter()
        for name in names:
            module = load_module(name)
            print(f"\n## {name}", flush=True)
            try:
                result = module.run(quick=args.quick, manifest=args.manifest, work=args.work)
            except Exception:  # report it and run the others; the exit status says it failed
                traceback.print_exc()
                failed.append(name)
                continue
            print(module.table(result))
            print(f"-> {write_result(args.out, name, result)} ({result.get('seconds', '?')} s)", flush=True)
        print(f"\nall benchmarks: {time.perf_counter() - started:.0f} s")
    readme = readme_to_update(args.readme, args.out, args.no_readme)
    if readme is not None:
        updated = update_readme(readme, args.out)
        print(f"{readme}: tables regenerated from {', '.join(updated) or 'nothing'}")
    elif not args.no_readme:
        print(f"{DEFAULT_README} left alone: its tables come from {RESULTS_DIR} only (or pass --readme FILE)")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
