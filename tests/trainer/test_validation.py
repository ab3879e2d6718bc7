"""Validation videos (--validation-prompts / --validation-steps) and the held-out preference set
(--eval-prefs) on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labeler.fileio import read_lines
from labeler.schemas import ManifestEntry, iter_manifest
from tests.trainer.conftest import make_record, write_records
from trainer.config import ConfigError, parse_train_args
from trainer.media import read_video
from trainer.train import main, train

pytestmark = pytest.mark.slow

LABELS = [["A", "A", "B", "tie"], ["B", "B", "A", "B"], ["A", "tie", "A", "B"], ["B", "tie", "tie", "B"]]


@pytest.fixture(scope="module")
def label_files(tiny_pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(training labels: the first three pairs, held-out labels: the fourth)."""
    entries = [e for e in iter_manifest(tiny_pairs) if isinstance(e, ManifestEntry)]
    records = [
        make_record(e.pair_id, labs, video_a=str(e.video_a), video_b=str(e.video_b), prompt=e.prompt)
        for e, labs in zip(entries, LABELS, strict=True)
    ]
    root = tmp_path_factory.mktemp("val-labels")
    return write_records(root / "train.jsonl", records[:3]), write_records(
        root / "heldout.jsonl", records[3:]
    )


def test_validation_videos_from_the_base_model_and_every_n_steps_and_a_held_out_eval(label_files, tmp_path):
    train_labels, heldout = label_files
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a textured surface slides to the left\n\na red ball\n")
    out = tmp_path / "run"
    argv = ["--tiny", "--prefs", str(train_labels), "--output-dir", str(out), "--steps", "3", "--eval-pairs", "3",
            "--validation-prompts", str(prompts), "--validation-steps", "2", "--validation-inference-steps", "4",
            "--eval-prefs", str(heldout), "--lr", "5e-2", "--report-to", "none"]  # fmt: skip
    summary = train(parse_train_args(argv), progress=False)
    # Step 0 (base model), every 2 steps, and the end; one mp4 per non-empty prompt line.
    for step in (0, 2, 3):
        for i in (0, 1):
            video = read_video(out / "validation" / f"step-{step}" / f"prompt-{i}.mp4")
            assert video.frames.shape == (33, 64, 64, 3)
    assert not (out / "validation" / "step-1").exists()
    lines = [json.loads(line) for line in read_lines(out / "log.jsonl")]
    listed = {line["step"]: line["validation"] for line in lines if "validation" in line}
    assert listed == {s: [f"validation/step-{s}/prompt-{i}.mp4" for i in (0, 1)] for s in (0, 2, 3)}
    # Same noise per prompt: the base model's and the trained LoRA's videos differ only by training.
    base = read_video(out / "validation" / "step-0" / "prompt-0.mp4").frames
    trained = read_video(out / "validation" / "step-3" / "prompt-0.mp4").frames
    assert abs(base.astype(int) - trained.astype(int)).mean() > 0.5
    # The held-out set is scored beside the training pairs, on its own pair.
    assert summary["eval_before"]["pairs"] == 3 and summary["eval_heldout_before"]["pairs"] == 1
    assert summary["eval_heldout_before"]["loss"] == pytest.approx(0.6931, abs=1e-3)  # LoRA starts at 0
    assert summary["eval_heldout_after"]["loss"] != pytest.approx(0.6931, abs=1e-4)
    evals = [line for line in lines if "eval" in line]
    assert [sorted(line) for line in evals] == [["eval", "eval_heldout", "step"]] * 2


def test_validation_options_are_checked(label_files, tmp_path, capsys):
    train_labels, _ = label_files
    with pytest.raises(ConfigError, match="validation_steps needs validation_prompts"):
        parse_train_args(["--tiny", "--prefs", "x", "--output-dir", "y", "--validation-steps", "2"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    argv = ["--tiny", "--prefs", str(train_labels), "--output-dir", str(tmp_path / "o"), "--steps", "1",
            "--validation-prompts", str(empty)]  # fmt: skip
    assert main(argv) == 2
    assert "no prompt in the file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was encoded or written
