"""Two processes with ``accelerate launch`` on the CPU (gloo), using the shipped DDP config: one log
line per step from the main process, the data split over the processes (two processes with batch 1
train exactly what one process with batch 2 does), exact resume, evaluation over every process's
pairs. Also checks that the shipped FSDP config only uses options ``accelerate launch`` knows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from labeler.fileio import read_lines
from labeler.schemas import ManifestEntry, iter_manifest
from tests.trainer.conftest import make_record, write_records
from trainer.config import parse_train_args
from trainer.train import train

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "accelerate"
# Every pair has a non-tie video label, so vanilla DPO keeps all four.
LABELS = [["A", "A", "B", "tie"], ["B", "B", "A", "B"], ["A", "tie", "A", "B"], ["B", "tie", "tie", "B"]]


@pytest.fixture(scope="module")
def labels(tiny_pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    entries = [e for e in iter_manifest(tiny_pairs) if isinstance(e, ManifestEntry)]
    records = [
        make_record(e.pair_id, labs, video_a=str(e.video_a), video_b=str(e.video_b), prompt=e.prompt)
        for e, labs in zip(entries, LABELS, strict=True)
    ]
    return write_records(tmp_path_factory.mktemp("mp-labels") / "labels.jsonl", records)


def common_args(
    labels: Path, out: Path, cache: Path, batch_size: int, steps: int, mode: str = "dense"
) -> list[str]:
    return ["--tiny", "--prefs", str(labels), "--output-dir", str(out), "--cache-dir", str(cache), "--mode", mode,
            "--batch-size", str(batch_size), "--steps", str(steps), "--save-every", "2", "--eval-pairs", "4",
            "--report-to", "none"]  # fmt: skip


def launch(args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "ddp.yaml"),
           "--num_processes", "2", "--main_process_port", "0", "-m", "trainer.train", *args]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in read_lines(out / "log.jsonl")]


def numbers(out: Path) -> list[tuple[int, float]]:
    return [
        (line["step"], line["eval"]["loss"] if "eval" in line else line["loss"]) for line in log_lines(out)
    ]


def lora(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(out / f"checkpoint-{step}" / "lora.safetensors")


@pytest.mark.slow
def test_two_processes_split_the_data_log_once_resume_exactly_and_evaluate_all_pairs(labels, tmp_path):
    cache = tmp_path / "cache"
    # One process, batch 2 (in-process; it also fills the latent cache the launched runs read).
    single = train(parse_train_args(common_args(labels, tmp_path / "single", cache, 2, 4)), progress=False)
    assert single["pairs"] == 4

    # Two processes, batch 1 each: the same global batch of 2 pairs per step.
    done = launch(common_args(labels, tmp_path / "multi", cache, 1, 4))
    assert "processes: 2, global batch: 2 pairs per step" in done.stdout
    summaries = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # printed by the main process only
    multi = log_lines(tmp_path / "multi")
    assert [(line["step"], "eval" in line) for line in multi] == [(0, True), (1, False), (2, False), (3, False),
                                                                   (4, False), (4, True)]  # fmt: skip
    assert all(line["eval"]["pairs"] == 4 for line in multi if "eval" in line)
    # Each step's loss and gradient norm match the one-process run in dense mode,
    # where the pairs hold different numbers of labeled latent frames: each process divides its terms
    # by the step's global term count (a per-process mean, then averaged, gave a step-1 gradient norm
    # ~20 % off). The two processes took different pairs (the same pair twice would change it too).
    # (Not bit-equal: 2 videos per forward instead of 4 round differently, and the lr is high.)
    for one, two in zip(log_lines(tmp_path / "single"), multi, strict=True):
        # (implicit_acc and reward_margin are not compared: they are signs and differences of
        # near-equal rewards, which rounding flips or changes by tens of percent.)
        for key in ("loss", "grad_norm"):
            if key in one:
                assert two[key] == pytest.approx(one[key], rel=1e-3), (one["step"], key)
    # The eval after training covers all 4 pairs, gathered from both processes.
    assert multi[-1]["eval"]["loss"] == pytest.approx(single["eval_after"]["loss"], rel=1e-4)
    assert multi[-1]["eval"]["loss"] != pytest.approx(multi[0]["eval"]["loss"], abs=1e-6)  # it trained
    # (The weights are not compared with the one-process run: AdamW divides by sqrt(v), which turns
    # rounding noise in near-zero LoRA gradients into whole lr-sized steps.)
    multi_w = lora(tmp_path / "multi", 4)

    # Stopped after step 2 and resumed under two processes: the same weights and the same log.
    split = tmp_path / "split"
    launch(common_args(labels, split, cache, 1, 2))
    launch([*common_args(labels, split, cache, 1, 4), "--resume", "--process-group-timeout", "900"])
    resumed = lora(split, 4)
    assert all(torch.equal(resumed[k], multi_w[k]) for k in multi_w)
    resumed_log, straight_log = numbers(split), numbers(tmp_path / "multi")
    assert [step for step, _ in resumed_log] == [step for step, _ in straight_log]
    assert [v for _, v in resumed_log] == pytest.approx([v for _, v in straight_log], abs=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["frame", "segment"])
def test_batch_two_and_batch_one_with_two_accumulated_micro_batches_take_the_same_dense_step(
    labels, tmp_path, reduction
):
    cache = tmp_path / "cache"

    def step_one(name: str, *extra: str) -> dict:
        argv = [
            *common_args(labels, tmp_path / name, cache, 2, 1),
            "--eval-pairs",
            "0",
            "--reduction",
            reduction,
        ]
        train(parse_train_args([*argv, *extra]), progress=False)
        return log_lines(tmp_path / name)[0]

    whole = step_one("whole")
    accumulated = step_one("accumulated", "--batch-size", "1", "--grad-accum", "2")
    # The step's two pairs hold different numbers of loss terms, so a mean per micro-batch, averaged,
    # would differ from the mean over the step's terms.
    assert whole["loss_terms"] == accumulated["loss_terms"] > 0
    for key in ("loss", "grad_norm"):
        assert accumulated[key] == pytest.approx(whole[key], rel=1e-3, abs=1e-7), key


def test_the_shipped_accelerate_configs_use_only_options_accelerate_launch_knows():
    from accelerate.commands.launch import launch_command_parser

    known = {a.dest for a in launch_command_parser()._actions}
    for name in ("ddp.yaml", "fsdp.yaml"):
        config = yaml.safe_load((CONFIGS / name).read_text())
        options = {k for k in config if k not in ("compute_environment", "distributed_type", "fsdp_config")}
        options |= set(config.get("fsdp_config", {}))
        assert (
            options - known - {"machine_rank", "use_cpu", "downcast_bf16", "main_training_function"} == set()
        ), name
    fsdp = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_version"] == 2
    # The wrap class is the transformer's repeated block, by its real name.
    from trainer.models import load_adapter

    transformer = load_adapter("tiny").load_transformer()
    blocks = [
        m
        for m in transformer.modules()
        if type(m).__name__ == fsdp["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
    ]
    assert len(blocks) == transformer.config.num_layers
