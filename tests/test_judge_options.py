"""Judge options given to a judge that does not read them are refused, never accepted and ignored
(the user would believe the option took effect)."""

from __future__ import annotations

import argparse

import pytest

import labeler.batch
from labeler.cli_options import JUDGE_READS, UsageError, build_judge_from_args
from labeler.judges import JUDGE_NAMES

#: One valid command-line value per judge option (argparse dest -> flags).
SAMPLE = {
    "model": ["--model", "m"],
    "base_url": ["--base-url", "http://127.0.0.1:9/v1"],
    "prompt": ["--prompt", "conservative"],
    "layout": ["--layout", "side-by-side"],
    "detail": ["--detail", "high"],
    "temperature": ["--temperature", "0.5"],
    "max_tokens": ["--max-tokens", "10"],
    "no_logprobs": ["--no-logprobs"],
    "no_strict": ["--no-strict"],
    "reasoning_effort": ["--reasoning-effort", "low"],
    "extra_body": ["--extra-body", '{"top_k": 1}'],
    "default_query": ["--default-query", '{"api-version": "2024-10-21"}'],
    "default_header": ["--default-header", '{"api-key": "k"}'],
    "price": ["--price", "1,2"],
    "answer_order": ["--answer-order", "rationale-first"],
    "input": ["--input", "video"],
    "show_reference": ["--show-reference"],
    "device": ["--device", "cpu"],
    "dtype": ["--dtype", "float32"],
    "rationale_tokens": ["--rationale-tokens", "4"],
    "tie_margin": ["--tie-margin", "1"],
    "no_reference": ["--no-reference"],
    "judge_processes": ["--judge-processes", "2"],
}


def _judge_group_dests() -> set[str]:
    parser = labeler.batch.build_parser()
    groups = [g for g in parser._action_groups if g.title == "judge"]
    assert len(groups) == 1
    return {a.dest for a in groups[0]._group_actions if isinstance(a, argparse.Action)} - {"judge"}


def test_every_judge_option_is_declared_as_read_by_some_judge():
    """A new option without a JUDGE_READS entry would be refused by every judge; one listed here
    but gone from the parser would be a stale entry."""
    assert set().union(*JUDGE_READS.values()) == _judge_group_dests() == set(SAMPLE)
    assert set(JUDGE_READS) == set(JUDGE_NAMES)


@pytest.mark.parametrize("judge", JUDGE_NAMES)
def test_options_another_judge_reads_are_refused(judge):
    unread = sorted(set(SAMPLE) - JUDGE_READS[judge])
    assert unread  # every judge has options it does not read
    needs_model = [] if judge == "metrics" else SAMPLE["model"]
    for name in unread:
        args = labeler.batch.build_parser().parse_args(
            ["m.jsonl", "--out", "o", "--judge", judge, *needs_model, *SAMPLE[name]]
        )
        flag = SAMPLE[name][0]
        readers = " / ".join(sorted(j for j, reads in JUDGE_READS.items() if name in reads))
        with pytest.raises(
            UsageError, match=f"^{flag}: --judge {judge} does not read it \\(options of --judge {readers}\\)$"
        ):
            build_judge_from_args(args)


def test_several_unread_options_are_named_together_and_the_batch_cli_exits_2(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    with pytest.raises(SystemExit) as exc:
        labeler.batch.main(
            [str(manifest), "--out", str(tmp_path / "o.jsonl"), "--model", "gpt-4o", "--device", "cpu"]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--device, --model: --judge metrics does not read them" in err


def test_options_a_judge_reads_pass_the_check():
    args = labeler.batch.build_parser().parse_args(
        ["m.jsonl", "--out", "o", "--tie-margin", "0.5", "--no-reference", "--judge-processes", "0"]
    )
    judge = build_judge_from_args(args)
    assert judge.fingerprint()["tie_margin"] == 0.5


def test_the_judge_config_checks_itself_when_built_in_code():
    """No CLI involved: the service and Ray actors get a JudgeConfig, held to the same rules."""
    from labeler.judge_config import JudgeConfig

    with pytest.raises(UsageError, match=r"^--device: --judge openai does not read it"):
        JudgeConfig(judge="openai", model="m", device="cpu")
    with pytest.raises(UsageError, match="--judge hf needs --model"):
        JudgeConfig(judge="hf")
    config = JudgeConfig(tie_margin=0.5, no_reference=True, judge_processes=0)
    assert config.judge_kwargs() == {"tie_margin": 0.5, "use_reference": False, "processes": 0}
    assert config.build().fingerprint()["use_reference"] is False


def test_every_field_of_the_judge_config_is_a_flag_with_help():
    """Adding an option is one field: its flag, help and judges follow from it."""
    from dataclasses import fields

    from labeler.judge_config import JudgeConfig

    parser = labeler.batch.build_parser()
    by_dest = {a.dest: a for a in parser._actions}
    for f in fields(JudgeConfig):
        assert f.name in by_dest and by_dest[f.name].help == f.metadata["help"], f.name
        assert by_dest[f.name].option_strings == ["--" + f.name.replace("_", "-")]


def test_the_engine_config_checks_itself_when_built_in_code():
    from labeler.engine import EngineConfig

    for bad, message in [
        ({"request_timeout": float("nan")}, "--timeout must be a positive number of seconds"),
        ({"max_cost": -1.0}, "--max-cost must be a finite amount"),
        ({"concurrency": 0}, "--concurrency must be at least 1"),
        ({"segment_seconds": 1e308}, "--segment-seconds must be at most"),
    ]:
        with pytest.raises(UsageError, match=message):
            EngineConfig(**bad)  # type: ignore[arg-type]
