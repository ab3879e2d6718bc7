"""The whole loop on the tiny model: guided pairs -> metrics-judge labels (the real labeler CLI) ->
dense training -> checkpoint -> resume; vanilla DPO on the same data; the saved LoRA loads in diffusers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import WanPipeline
from safetensors.torch import load_file

from labeler.fileio import read_lines
from labeler.schemas import ManifestEntry, iter_manifest, read_records
from tests.trainer.conftest import make_record, write_records
from trainer.config import parse_train_args
from trainer.train import add_lora, main, train

pytestmark = pytest.mark.slow

STEP_KEYS = {"step", "loss", "implicit_acc", "reward_margin", "grad_norm", "lr", "step_time"}


@pytest.fixture(scope="module")
def labels(tiny_pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pairs labeled by `python -m labeler.batch ... --judge metrics`, as a user would.

    A random-weight model's two denoisings differ only faintly, which the judge's fitted margin
    (made for real footage) calls ties; a small margin lets those faint differences decide, so the
    trainer has preferences to learn."""
    out = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    cmd = [sys.executable, "-m", "labeler.batch", str(tiny_pairs), "--out", str(out), "--judge", "metrics",
           "--tie-margin", "0.05", "--cache-dir", str(out.parent / "judge-cache"), "--quiet"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = read_records(out)
    assert len(records) == 4
    assert any(s.label != "tie" for r in records for s in r.segments)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One latent cache for every run here: the VAE encodes each clip once."""
    return tmp_path_factory.mktemp("latent-cache")


def run(labels: Path, out: Path, cache: Path, *extra: str) -> dict:
    argv = ["--tiny", "--prefs", str(labels), "--output-dir", str(out), "--cache-dir", str(cache), *extra]
    return train(parse_train_args(argv), progress=False)


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in read_lines(out / "log.jsonl")]


def test_dense_training_lowers_the_loss_and_learns_the_labels(labels, cache, tmp_path):
    summary = run(labels, tmp_path / "dense", cache, "--steps", "20")
    before, after = summary["eval_before"], summary["eval_after"]
    assert before["loss"] == pytest.approx(0.6931, abs=1e-3)  # LoRA B = 0: policy == reference
    assert after["loss"] < before["loss"]
    assert after["implicit_acc"] > 0.5
    steps = [line for line in log_lines(tmp_path / "dense") if "eval" not in line]
    assert [line["step"] for line in steps] == list(range(1, 21))
    assert all(set(line) >= STEP_KEYS for line in steps)
    assert steps[0]["lr"] < steps[-1]["lr"]  # warm-up
    assert sorted(p.name for p in (tmp_path / "dense").glob("checkpoint-*")) == [
        "checkpoint-10",
        "checkpoint-20",
    ]
    assert (tmp_path / "dense" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_resume_continues_to_the_same_state_and_the_log_reads_like_one_run(labels, cache, tmp_path):
    args = ("--save-every", "3", "--eval-pairs", "2")
    straight = tmp_path / "straight"
    run(labels, straight, cache, "--steps", "6", *args)
    split = tmp_path / "split"
    first = run(labels, split, cache, "--steps", "3", *args)  # ends with its own eval at step 3
    with (split / "log.jsonl").open("a") as fh:  # a step the killed run logged but never saved
        fh.write(json.dumps({"step": 4, "loss": 99.0}) + "\n" + '{"step": 5, "lo')
    resumed = run(labels, split, cache, "--steps", "6", *args, "--resume")
    a, b = (
        load_file(straight / "checkpoint-6" / "lora.safetensors"),
        load_file(split / "checkpoint-6" / "lora.safetensors"),
    )
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-7) for k in a)
    at_3 = load_file(split / "checkpoint-3" / "lora.safetensors")
    assert any(not torch.equal(at_3[k], b[k]) for k in b)  # it did train after resuming
    # The log reads like one run: the first run's final eval, the unsaved step 4 and the torn line
    # are gone; the eval before training is kept; everything matches the uninterrupted run.
    shape = [(line["step"], "eval" in line) for line in log_lines(split)]
    assert shape == [(0, True), *((s, False) for s in range(1, 7)), (6, True)]
    assert shape == [(line["step"], "eval" in line) for line in log_lines(straight)]
    values = [line.get("loss", line.get("eval", {}).get("loss")) for line in log_lines(split)]
    expected = [line.get("loss", line.get("eval", {}).get("loss")) for line in log_lines(straight)]
    assert values == pytest.approx(expected, abs=1e-6)
    assert resumed["eval_before"] == first["eval_before"]


def test_timestep_sampling_changes_the_draws_training_uses(labels, cache, tmp_path):
    common = ("--steps", "1", "--eval-pairs", "0", "--lr", "0")
    grad_norms = {}
    for sampling in ("auto", "uniform", "shift"):
        run(labels, tmp_path / sampling, cache, *common, "--timestep-sampling", sampling)
        grad_norms[sampling] = log_lines(tmp_path / sampling)[0]["grad_norm"]
    assert grad_norms["auto"] == grad_norms["shift"]  # Wan's own: shift 5
    assert grad_norms["uniform"] != grad_norms["shift"]
    run(labels, tmp_path / "shift3", cache, *common, "--timestep-shift", "3")
    assert log_lines(tmp_path / "shift3")[0]["grad_norm"] != grad_norms["shift"]


def test_vanilla_mode_runs_on_the_same_data(labels, cache, tmp_path):
    records = read_records(labels)
    if all(r.video_label == "tie" for r in records):
        pytest.fail("the metrics judge gave every pair a tie video label: nothing for vanilla DPO")
    summary = run(labels, tmp_path / "vanilla", cache, "--mode", "vanilla", "--steps", "20")
    assert summary["skipped"].get("tie_video", 0) == sum(r.video_label == "tie" for r in records)
    assert summary["eval_after"]["loss"] < summary["eval_before"]["loss"]
    steps = [line for line in log_lines(tmp_path / "vanilla") if "eval" not in line]
    assert len(steps) == 20 and all(set(line) >= STEP_KEYS for line in steps)


def test_final_lora_loads_with_diffusers_and_matches_the_checkpoint(labels, cache, tmp_path, tiny_adapter):
    out = tmp_path / "run"
    run(labels, out, cache, "--steps", "4", "--eval-pairs", "0")
    # What WanPipeline.load_lora_weights(out / "lora") does for the transformer:
    state_dict = WanPipeline.lora_state_dict(str(out / "lora"))
    loaded = tiny_adapter.load_transformer()
    loaded.load_lora_adapter(state_dict, prefix="transformer", adapter_name="default")
    trained = tiny_adapter.load_transformer()
    add_lora(trained, 4, None, list(tiny_adapter.lora_targets), seed=0)
    trained.load_state_dict(load_file(out / "checkpoint-4" / "lora.safetensors"), strict=False)
    gen = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 16, 9, 8, 8, generator=gen), torch.randn(1, 32, 32, generator=gen)
    with torch.no_grad():
        ours = tiny_adapter.predict_velocity(trained, x, torch.tensor([0.5]), text)
        theirs = tiny_adapter.predict_velocity(loaded, x, torch.tensor([0.5]), text)
        base = tiny_adapter.predict_velocity(tiny_adapter.load_transformer(), x, torch.tensor([0.5]), text)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, base, atol=1e-5)


def test_cli_runs_and_reports_bad_label_files(labels, cache, tmp_path, capsys):
    assert main(["--tiny", "--prefs", str(labels), "--output-dir", str(tmp_path / "cli"), "--steps", "2",
                 "--cache-dir", str(cache)]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and Path(summary["lora_dir"]).is_dir()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"pair_id": "x"}\n{"pair_id": "y"}\n')
    assert main(["--tiny", "--prefs", str(bad), "--output-dir", str(tmp_path / "bad")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_num_frames_sets_the_training_window(tiny_pairs, cache, tmp_path, capsys):
    entries = [e for e in iter_manifest(tiny_pairs) if isinstance(e, ManifestEntry)][:2]
    kept = make_record(entries[0].pair_id, ["A", "B", "tie", "tie"], video_a=str(entries[0].video_a),
                       video_b=str(entries[0].video_b))  # fmt: skip
    late = make_record(entries[1].pair_id, ["tie", "tie", "A", "A"], video_a=str(entries[1].video_a),
                       video_b=str(entries[1].video_b))  # fmt: skip
    labels = write_records(tmp_path / "labels.jsonl", [kept, late])
    # 17 frames: the second pair's preferences (frames 16-33) lie past the window.
    summary = run(
        labels, tmp_path / "window", cache, "--num-frames", "17", "--steps", "1", "--eval-pairs", "1"
    )
    assert summary["pairs"] == 1 and summary["skipped"] == {"few_nontie_in_window": 1}
    assert "enough non-tie segments in the whole video, too few inside the window" in capsys.readouterr().out
    assert summary["eval_before"]["labeled"] == 3  # latent frames [0,1) [1,5) in A, [9,13) in B
    whole = run(labels, tmp_path / "whole", cache, "--steps", "1", "--eval-pairs", "2")
    assert whole["pairs"] == 2 and whole["skipped"] == {}
    bad = ["--tiny", "--prefs", str(labels), "--output-dir", str(tmp_path / "bad"), "--num-frames", "18"]
    assert main(bad) == 2
    assert "num_frames must be 1 + k*4, got 18" in capsys.readouterr().err


def test_resume_refuses_changed_settings_naming_each_unless_told_and_then_logs_them(
    labels, cache, tmp_path, capsys
):
    out = tmp_path / "run"
    base = ["--tiny", "--prefs", str(labels), "--output-dir", str(out), "--cache-dir", str(cache),
            "--eval-pairs", "0", "--save-every", "2"]  # fmt: skip
    assert main([*base, "--steps", "2"]) == 0
    capsys.readouterr()
    changed = [
        "--steps",
        "3",
        "--resume",
        "--beta",
        "5",
        "--seed",
        "7",
        "--lora-alpha",
        "8",
        "--mode",
        "vanilla",
    ]
    assert main([*base, *changed]) == 2
    err = capsys.readouterr().err
    for expected in ("beta: 500.0 in the checkpoint, 5.0 now", "seed: 0 in the checkpoint, 7 now",
                     "lora_alpha: 4 in the checkpoint, 8 now", "mode: 'dense' in the checkpoint, 'vanilla' now"):  # fmt: skip
        assert expected in err
    assert "lora_rank" not in err and "timestep" not in err  # only what changed is named
    assert [line["step"] for line in log_lines(out)] == [1, 2]  # nothing ran
    # The same settings resume; a changed timestep shift is refused too.
    assert main([*base, "--steps", "3", "--resume", "--timestep-shift", "3"]) == 2
    assert "timestep_shift: 5.0 in the checkpoint, 3.0 now" in capsys.readouterr().err
    # Told to go on: it does, and the log says what changed at which step.
    assert main([*base, "--steps", "3", "--resume", "--beta", "5", "--resume-changed-config"]) == 0
    lines = log_lines(out)
    assert lines[2] == {"step": 2, "config_changed": {"beta": [500.0, 5.0]}}
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3]
