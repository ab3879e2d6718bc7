"""TrainConfig: help text, presets, YAML/TOML files and flag precedence, clear errors."""

from __future__ import annotations

import pytest

from trainer.config import TINY_PRESET, ConfigError, TrainConfig, build_parser, parse_train_args

REQUIRED = ["--prefs", "p.jsonl", "--model", "org/model", "--output-dir", "out"]


def test_defaults_follow_the_densedpo_paper():
    cfg = parse_train_args(REQUIRED)
    assert (cfg.mode, cfg.beta, cfg.lora_rank, cfg.lr, cfg.warmup, cfg.max_grad_norm) == (
        "dense",
        500.0,
        128,
        1e-5,
        250,
        1.0,
    )
    assert cfg.min_nontie_fraction == 0.2


def test_every_field_has_help_in_the_cli():
    text = build_parser().format_help()
    for needle in (
        "--beta",
        "DPO beta",
        "--grad-accum",
        "--lora-rank",
        "--config",
        "--resume",
        "--no-resume",
    ):
        assert needle in text


def test_tiny_preset_and_flags_override_it():
    cfg = parse_train_args(["--tiny", "--prefs", "p.jsonl", "--output-dir", "o", "--lora-rank", "8"])
    assert cfg.model == "tiny" and cfg.lr == TINY_PRESET["lr"] and cfg.lora_rank == 8
    assert (
        parse_train_args(["--model", "tiny", "--prefs", "p", "--output-dir", "o"]).steps
        == TINY_PRESET["steps"]
    )


def test_yaml_config_file_with_flag_precedence(tmp_path):
    path = tmp_path / "train.yaml"
    # PyYAML reads 1e-4 as a string: it must still become a float.
    path.write_text(
        "prefs: labels.jsonl\nmodel: org/model\noutput-dir: out\nlr: 1e-4\nlora_rank: 16\nmode: vanilla\n"
    )
    cfg = parse_train_args(["--config", str(path), "--lora-rank", "32"])
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)
    assert cfg.lora_rank == 32  # flag beats file
    assert cfg.mode == "vanilla" and cfg.prefs == "labels.jsonl"


def test_toml_config_file(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text(
        'prefs = "l.jsonl"\nmodel = "tiny"\noutput_dir = "o"\nsteps = 7\ngradient_checkpointing = true\n'
    )
    cfg = parse_train_args(["--config", str(path)])
    assert cfg.steps == 7 and cfg.gradient_checkpointing is True
    assert cfg.lr == TINY_PRESET["lr"]  # model = "tiny" in the file applies the preset under it


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lerning_rate: 0.1\n", "unknown option 'lerning_rate'"),
        ("steps: many\n", "option 'steps' must be int"),
        ("steps: 2.5\n", "option 'steps' must be int"),
        ("mode: best\n", "mode must be one of"),
        ("- a list\n", "must be a mapping"),
        ("steps: [1\n", "cannot parse config"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse_train_args([*REQUIRED, "--config", str(path)])


def test_bad_values_and_missing_options():
    with pytest.raises(ConfigError, match="steps must be positive"):
        TrainConfig(prefs="p", model="m", output_dir="o", steps=0)
    with pytest.raises(ConfigError, match="min_nontie_fraction"):
        TrainConfig(prefs="p", model="m", output_dir="o", min_nontie_fraction=1.5)
    with pytest.raises(ConfigError, match=r"\.ini"):
        parse_train_args([*REQUIRED, "--config", "x.ini"])
    with pytest.raises(SystemExit):
        parse_train_args(["--model", "m"])  # no --prefs / --output-dir


def test_timestep_options_and_their_checks():
    cfg = parse_train_args([*REQUIRED, "--timestep-sampling", "logit-normal", "--timestep-shift", "3"])
    assert (cfg.timestep_sampling, cfg.timestep_shift) == ("logit-normal", 3.0)
    assert parse_train_args(REQUIRED).timestep_sampling == "auto"  # the model family's own
    with pytest.raises(ConfigError, match="no effect with timestep_sampling 'uniform'"):
        parse_train_args([*REQUIRED, "--timestep-sampling", "uniform", "--timestep-shift", "3"])
    with pytest.raises(ConfigError, match="timestep_shift must be positive"):
        parse_train_args([*REQUIRED, "--timestep-shift", "0"])
    with pytest.raises(SystemExit):
        parse_train_args([*REQUIRED, "--timestep-sampling", "cosine"])


def test_num_frames_help_says_what_it_does_and_bad_values_fail():
    text = " ".join(build_parser().format_help().split())
    assert "Train on the first N frames" in text and "default: all" not in text
    with pytest.raises(ConfigError, match="num_frames must be positive"):
        parse_train_args([*REQUIRED, "--num-frames", "0"])
