"""`python -m trainer.cache`: the latent and text cache built in shards by several processes equals
the one one process builds, and training then finds everything in it; the start-up lines about
processes and the global batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from labeler.schemas import ManifestEntry, iter_manifest
from tests.trainer.conftest import make_record, write_records
from trainer.cache import build_cache, main
from trainer.config import ConfigError, parse_train_args
from trainer.train import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def labels(tiny_pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    entries = [e for e in iter_manifest(tiny_pairs) if isinstance(e, ManifestEntry)]
    records = [
        make_record(
            e.pair_id, ["A", "B", "tie", "A"], video_a=str(e.video_a), video_b=str(e.video_b), prompt=e.prompt
        )
        for e in entries
    ]
    return write_records(tmp_path_factory.mktemp("cache-labels") / "labels.jsonl", records)


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.safetensors")}


def test_shards_together_build_what_one_process_builds_and_training_needs_nothing_more(
    labels, tmp_path, capsys
):
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert build_cache([str(labels)], "tiny", whole) == 4
    assert build_cache([str(labels)], "tiny", sharded, rank=0, world=2) == 2
    first = files(sharded)
    assert build_cache([str(labels)], "tiny", sharded, rank=1, world=2) == 2
    assert files(sharded) == files(whole) and first < files(whole)
    assert len([f for f in files(whole) if f.startswith("latents")]) == 8  # 4 pairs x A, B
    # Training with that cache encodes nothing more; it says how many processes run and how big a
    # step is, and warns that 8 pairs per step is more than the 4 there are.
    argv = ["--tiny", "--prefs", str(labels), "--output-dir", str(tmp_path / "run"), "--cache-dir", str(sharded),
            "--steps", "1", "--eval-pairs", "0", "--batch-size", "8", "--report-to", "none"]  # fmt: skip
    train(parse_train_args(argv), progress=False)
    assert files(sharded) == files(whole)
    out = capsys.readouterr().out
    assert "processes: 1, global batch: 8 pairs per step (1 processes x grad_accum 1 x batch_size 8)" in out
    assert "warning: the global batch (8 pairs) is larger than the data (4 pairs)" in out


def test_cache_cli_refuses_bad_geometry_and_rank(labels, tmp_path, capsys):
    argv = [
        "--prefs",
        str(labels),
        "--model",
        "tiny",
        "--cache-dir",
        str(tmp_path / "c"),
        "--num-frames",
        "18",
    ]
    assert main(argv) == 2
    assert "num_frames must be 1 + k*4, got 18" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="rank 2 is not in"):
        build_cache([str(labels)], "tiny", tmp_path / "c", rank=2, world=2)
    with pytest.raises(ConfigError, match="process_group_timeout must be positive"):
        parse_train_args(["--tiny", "--prefs", "x", "--output-dir", "y", "--process-group-timeout", "0"])
