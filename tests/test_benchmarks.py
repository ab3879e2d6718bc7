"""Smoke test of benchmarks/: every benchmark runs end to end with tiny settings on small videos and
writes its JSON with the fixed fields; the README's tables are regenerated from those files. No
timing is asserted (the machine is shared): only that the figures exist and are consistent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import run_all, throughput
from benchmarks.common import BenchmarkError, markdown_table, replicate_manifest
from labeler.schemas import read_manifest

#: Minutes, not seconds (real processes, demo sets or whole benchmarks): left out of `-m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture
def small_manifest(make_video, tmp_path: Path) -> Path:
    """Two aligned pairs of 2 s videos (two 1 s segments each) with a reference."""
    rows = []
    for n in range(2):
        a = make_video(f"p{n}_a.mp4", n_frames=48, fps=24.0, seed=n)
        b = make_video(f"p{n}_b.mp4", n_frames=48, fps=24.0, seed=n + 10)
        ref = make_video(f"p{n}_ref.mp4", n_frames=48, fps=24.0, seed=n + 20)
        rows.append({"pair_id": f"p{n}", "prompt": f"pair {n}", "video_a": a.name, "video_b": b.name,
                     "reference": ref.name, "segment_seconds": 1.0})  # fmt: skip
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def test_run_all_quick_writes_every_result_and_the_readme(small_manifest: Path, tmp_path: Path) -> None:
    out, readme = tmp_path / "results", tmp_path / "README.md"
    readme.write_text(run_all.DEFAULT_README.read_text(encoding="utf-8"), encoding="utf-8")
    code = run_all.main(["--quick", "--out", str(out), "--manifest", str(small_manifest),
                         "--work", str(tmp_path / "work"), "--readme", str(readme)])  # fmt: skip
    assert code == 0
    results = {name: json.loads((out / f"{name}.json").read_text()) for name in run_all.BENCHMARKS}
    for name, result in results.items():
        assert {"settings", "machine", "versions", "date"} <= set(result), name
        assert result["settings"]["quick"] is True
        assert result["machine"]["cpu_count"] >= 1 and result["versions"]["densepref"]

    tp = results["throughput"]
    assert {(r["latency_ms"], r["concurrency"], r["server_limit"]) for r in tp["rows"]} == {
        (s.latency_ms, s.concurrency, s.server_limit) for s in throughput.parse_grid(throughput.QUICK_GRID)
    }
    for row in tp["rows"]:
        assert {
            "latency_ms",
            "concurrency",
            "server_limit",
            "pairs_per_s",
            "bound_pairs_per_s",
            "efficiency",
        } <= set(row)
        assert row["segment_pairs"] == 2 * row["pairs"]  # two 1 s segments per pair
        assert row["requests"] == 2 * row["segment_pairs"]  # swap: both orders, no retries on the stand-in
        assert _finite(row["pairs_per_s"]) and row["pairs_per_s"] > 0
        assert row["server_max_in_flight"] <= row["server_limit"]
        if row["latency_ms"] == 0:
            assert row["bound_pairs_per_s"] is None and row["efficiency"] is None
        else:
            bound = min(row["concurrency"], row["server_limit"]) / (row["latency_ms"] / 1000) / 2
            assert row["bound_pairs_per_s"] == pytest.approx(bound, rel=1e-3)
            assert row["efficiency"] == pytest.approx(row["pairs_per_s"] / bound, rel=0.02)
    overhead = tp["overhead"]
    assert set(overhead["cpu_ms_per_pair"]) >= {"decode", "jpeg_encode", "json_encode", "sdk_and_http"}
    assert overhead["dominant"] in overhead["cpu_ms_per_pair"]
    assert overhead["images_per_request"] == 16  # 8 frames of each video, separate layout

    cache = results["cache"]
    assert cache["pairs_per_s"] > 0 and cache["requests"] == 0 and cache["decode_seconds"] == 0
    assert all(r["cache_hits"] == 2 * r["segment_pairs"] for r in cache["runs"])

    cost = results["cost"]
    separate_low = next(r for r in cost["rows"] if r["layout"] == "separate" and r["detail"] == "low")
    side_low = next(r for r in cost["rows"] if r["layout"] == "side-by-side" and r["detail"] == "low"
                    and r["geometry"] == separate_low["geometry"])  # fmt: skip
    assert separate_low["images"] == 2 * side_low["images"] == 32  # 2 orders x 16 vs 2 orders x 8 composites
    assert separate_low["usd_batch"] == pytest.approx(separate_low["usd"] * cost["batch_discount"])
    for row in cost["scenario_rows"]:
        assert row["dense_usd"] >= row["video_usd"] > 0

    decode = results["decode"]
    assert decode["sampled_frames"] < decode["frames"] and _finite(decode["speedup"])
    assert decode["sampled_frames"] == 2 * 2 * 8  # 2 videos x 2 segments x 8 frames

    step = results["trainer_step"]
    assert {"dense_over_vanilla", "dense_ms", "vanilla_ms", "peak_mb"} <= set(step)
    assert step["dense_over_vanilla"] == pytest.approx(step["dense_ms"] / step["vanilla_ms"], rel=1e-2)
    assert set(step["peak_mb"]) == {"dense", "vanilla"}

    text = readme.read_text()
    for name in (*run_all.BENCHMARKS, "summary"):
        block = text.split(f"<!-- BEGIN {name} -->")[1].split(f"<!-- END {name} -->")[0]
        assert "|---" in block, f"{name}: no table generated"
    assert f"{tp['rows'][0]['pairs_per_s']:.1f}" in text


def test_little_bound_and_grid_parsing() -> None:
    s = throughput.Setting(200, 32, 16)
    assert throughput.little_bound(s, requests_per_pair=2) == pytest.approx(16 / 0.2 / 2)
    assert throughput.little_bound(throughput.Setting(0, 32, 64), 2) is None
    assert throughput.parse_grid("0:8:64, 50:4:2") == [
        throughput.Setting(0, 8, 64),
        throughput.Setting(50, 4, 2),
    ]
    with pytest.raises(BenchmarkError, match="'50:4'"):
        throughput.parse_grid("0:8:64,50:4")
    with pytest.raises(BenchmarkError, match="concurrency"):
        throughput.parse_grid("10:0:4")


def test_a_bad_setting_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert throughput.main(["--grid", "200:32", "--out", str(tmp_path)]) == 2
    assert "error: grid item '200:32'" in capsys.readouterr().err
    assert not (tmp_path / "throughput.json").exists()


def test_readme_block_replacement_names_a_missing_marker() -> None:
    text = "a\n<!-- BEGIN x -->\nold\n<!-- END x -->\nb\n"
    assert run_all.replace_block(text, "x", "new") == "a\n<!-- BEGIN x -->\nnew\n<!-- END x -->\nb\n"
    with pytest.raises(BenchmarkError, match="BEGIN y"):
        run_all.replace_block(text, "y", "new")


def test_replicated_manifest_gives_every_copy_its_own_id_and_prompt(
    small_manifest: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "copies.jsonl"
    replicate_manifest(small_manifest, dest, pairs=5, tag="t")
    entries = read_manifest(dest)  # also checks pair ids are unique
    assert len(entries) == 5 and len({e.prompt for e in entries}) == 5
    assert all(Path(e.video_a).is_absolute() and Path(e.video_a).is_file() for e in entries)


def test_markdown_table_formats_and_marks_missing_values() -> None:
    table = markdown_table([{"a": 1.234, "b": None}], [("a", "A", ".1f"), ("b", "B", "")])
    assert table.splitlines() == ["| A | B |", "|---:|---|", "| 1.2 | – |"]


def test_a_run_elsewhere_leaves_the_tracked_readme_alone(tmp_path: Path) -> None:
    # Only benchmarks/results/ feeds the tracked README; any other --out needs an explicit --readme.
    assert run_all.readme_to_update(None, tmp_path / "elsewhere", no_readme=False) is None
    assert run_all.readme_to_update(None, run_all.RESULTS_DIR, no_readme=False) == run_all.DEFAULT_README
    assert run_all.readme_to_update(tmp_path / "R.md", tmp_path, no_readme=False) == tmp_path / "R.md"
    assert run_all.readme_to_update(None, run_all.RESULTS_DIR, no_readme=True) is None
    before = run_all.DEFAULT_README.read_bytes()
    code = run_all.main(["--readme-only", "--out", str(tmp_path)])
    assert code == 0 and run_all.DEFAULT_README.read_bytes() == before


def test_the_committed_results_regenerate_the_readme(tmp_path: Path) -> None:
    # Every committed JSON must still render with today's table() code (an older result may lack
    # a figure a newer run adds), so `run_all --readme-only` never breaks on the checkout.
    readme = tmp_path / "README.md"
    readme.write_text(run_all.DEFAULT_README.read_text(encoding="utf-8"), encoding="utf-8")
    assert run_all.main(["--readme-only", "--out", str(run_all.RESULTS_DIR), "--readme", str(readme)]) == 0
    assert set(run_all.load_results(run_all.RESULTS_DIR)) == set(run_all.BENCHMARKS)
