"""The --ray options, the node-local cache rule and the driver's budget, without starting Ray."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from labeler.batch import build_parser, main
from labeler.cli_options import ray_options_from_args, spec_from_args
from labeler.engine import EngineStats
from labeler.ledger import COUNTED_FIELDS as COUNTED_STATS
from labeler.ledger import Ledger, Limits
from labeler.runners.local import JobFiles
from labeler.runners.ray.cache_policy import filesystem_type, refuse_network_cache
from labeler.runners.ray.options import DEFAULT_WORKERS
from labeler.runners.ray.ray_runner import RayRun, _write_chunk
from labeler.runners.ray.worker import OUTCOME_COLUMNS


def options(*argv: str, pairs: int = 4):
    return ray_options_from_args(build_parser().parse_args(["m.jsonl", "--out", "o.jsonl", *argv]), pairs)


def test_ray_address_workers_and_gpus_reach_the_options() -> None:
    assert options() is None
    local = options("--ray")
    assert local is not None and (local.address, local.workers, local.gpus_per_worker) == (
        None,
        DEFAULT_WORKERS,
        0,
    )
    joined = options(
        "--ray", "ray://head:10001", "--ray-workers", "5", "--ray-gpus-per-worker", "0.5", pairs=7
    )
    assert joined is not None
    assert (joined.address, joined.workers, joined.gpus_per_worker, joined.pairs_per_worker) == (
        "ray://head:10001",
        5,
        0.5,
        7,
    )


def test_gpu_workers_put_the_hf_judge_on_their_gpu_unless_told_otherwise() -> None:
    def actors_device(*argv: str) -> str | None:
        args = build_parser().parse_args(["m", "--out", "o", "--judge", "hf", "--model", "m", "--ray", *argv])
        options = ray_options_from_args(args, 4)
        assert options is not None
        return options.judge_for_actors(spec_from_args(args).judge).device

    assert actors_device() is None  # no GPU reserved: the judge's own default
    assert actors_device("--ray-gpus-per-worker", "1") == "cuda"
    assert actors_device("--device", "cpu", "--ray-gpus-per-worker", "1") == "cpu"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ray-workers", "2"], "need --ray"),
        (["--ray", "--ray-workers", "0"], "at least 1"),
        (["--ray", "--ray-gpus-per-worker", "nan"], "finite"),
        (["--ray", "--ray-gpus-per-worker", "-1"], "finite number >= 0"),
        (["--ray", "--ray-gpus-per-worker", "inf"], "finite"),
        (["--ray", "--ray-gpus-per-worker", "1.5"], "whole number"),
        (["--ray", " "], "empty"),
    ],
)
def test_bad_ray_options_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        options(*argv)


def test_the_cli_reports_bad_ray_options_as_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("", encoding="utf-8")
    for argv in (
        ["--ray", "--openai-batch", "--judge", "openai", "--model", "m"],
        ["--ray", "--ray-workers", "-3"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([str(manifest), "--out", str(tmp_path / "o.jsonl"), *argv])
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--openai-batch and --ray" in err and "--ray-workers must be at least 1" in err


MOUNTS = "\n".join(
    [
        "/dev/sda1 / ext4 rw,relatime 0 0",
        "fileserver:/export/home /home nfs4 rw,vers=4.2 0 0",
        "/dev/nvme0n1 /home/me/local\\040disk xfs rw 0 0",
        "//nas/share /mnt/nas cifs rw 0 0",
        "",
        "garbage",
    ]
)


def test_the_filesystem_of_a_path_is_its_longest_mount_point() -> None:
    assert filesystem_type("/var/cache/densepref", MOUNTS) == "ext4"
    assert filesystem_type("/home/me/.cache/densepref", MOUNTS) == "nfs4"
    assert filesystem_type("/home/me/local disk/cache", MOUNTS) == "xfs"  # \040 is a space
    assert filesystem_type("/mnt/nas", MOUNTS) == "cifs"
    assert filesystem_type("/x", "") is None


def test_a_judgment_cache_on_a_network_filesystem_is_refused() -> None:
    refuse_network_cache(Path("/var/cache/densepref"), MOUNTS)
    refuse_network_cache(Path("/home/me/local disk/c"), MOUNTS)
    refuse_network_cache(None, MOUNTS)  # --no-cache
    for shared in ("/home/me/.cache/densepref", "/mnt/nas/c"):
        with pytest.raises(ValueError, match=r"network filesystem.*--cache-dir"):
            refuse_network_cache(Path(shared), MOUNTS)


def test_actor_counters_add_up_on_the_driver() -> None:
    total = EngineStats(requests=3, cost_usd=0.5)
    before = asdict(EngineStats(requests=10, cache_hits=1))
    after = asdict(EngineStats(requests=14, cache_hits=4, cost_usd=0.25, flips=1))
    Ledger(total).add(Ledger.delta(before, after))
    assert (total.requests, total.cache_hits, total.cost_usd, total.flips) == (7, 3, 0.75, 1)
    assert set(COUNTED_STATS) == set(before)


def _failed_rows(n: int, requests_each: int) -> dict[str, list]:
    """A chunk as an actor returns it: n pairs that failed, the chunk's counters on the first row."""
    rows: dict[str, list] = {name: [""] * n for name in OUTCOME_COLUMNS}
    rows["pair_id"] = [f"p{i}" for i in range(n)]
    rows["error_type"] = ["VideoError"] * n
    rows["error_message"] = ["broken"] * n
    rows["fatal"], rows["budget"] = [False] * n, [False] * n
    rows["stats"][0] = json.dumps({**dict.fromkeys(COUNTED_STATS, 0), "requests": n * requests_each})
    rows["worker"][0] = json.dumps({"node": "n1", "pid": 7, "gpus": [], "cache": None})
    return rows


def test_the_driver_stops_when_the_actors_together_spend_the_budget(tmp_path: Path) -> None:
    job = JobFiles(tmp_path / "o.jsonl", progress=False)
    run = RayRun(job.result, Ledger(budget=Limits(max_requests=10)))
    assert not _write_chunk(job, run, _failed_rows(2, 4))  # 8 requests: under the budget
    assert _write_chunk(job, run, _failed_rows(2, 4))  # 16: spent
    assert job.result.stopped is not None and "request budget spent: 16" in job.result.stopped
    assert job.result.failed == 4 and set(run.workers) == {"n1:7"}
    job.close()


def test_an_actor_that_hit_the_budget_stops_the_run_without_failing_the_pair(tmp_path: Path) -> None:
    job = JobFiles(tmp_path / "o.jsonl", progress=False)
    rows = _failed_rows(1, 0)
    rows["budget"] = [True]
    rows["error_message"] = ["request budget spent"]
    assert _write_chunk(job, RayRun(job.result), rows)
    assert (job.result.failed, job.result.stopped) == (0, "request budget spent")
    job.close()
