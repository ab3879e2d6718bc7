"""The CLI end to end and the report files: JSON, markdown with definitions, valid PNG plots, exit codes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image

from labeler.agreement.compute import compute_agreement, main
from labeler.agreement.report import DEFINITIONS_MD, headline, write_report
from tests.test_agreement import human_set, make_record, pred_set

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(r.model_dump_json() + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "pred": write_jsonl(tmp_path / "pred.jsonl", pred_set()),
        "h1": write_jsonl(tmp_path / "h1.jsonl", human_set("ann1")),
        "h2": write_jsonl(tmp_path / "h2.jsonl", human_set("ann2", p1_s1="A")),
    }


def assert_valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()


def test_cli_end_to_end_writes_every_file(files, tmp_path, capsys):
    out = tmp_path / "report"
    argv = [
        "--pred",
        str(files["pred"]),
        "--human",
        str(files["h1"]),
        "--human",
        str(files["h2"]),
        "--out",
        str(out),
        "--bootstrap",
        "200",
        "--seed",
        "5",
        "--fit-tie-threshold",
    ]
    assert main(argv) == 0
    for name in ("confusion.png", "coverage_accuracy.png", "segment_position.png"):
        assert_valid_png(out / name)
    saved = json.loads((out / "agreement.json").read_text())
    assert saved["segment"]["accuracy_no_ties"] == pytest.approx(4.5 / 6)
    assert saved["inputs"]["human"] == [str(files["h1"]), str(files["h2"])]
    assert saved["inputs"]["human_annotators"] == [["ann1"], ["ann2"]]
    assert saved["human_ceiling"]["segment"]["accuracy_no_ties"] == pytest.approx(5 / 6)
    assert saved["tie_threshold"]["n_fit_pairs"] + saved["tie_threshold"]["n_heldout_pairs"] == 3
    assert saved["bootstrap"] == {"resamples": 200, "seed": 5, "unit": "pair"}
    report = (out / "report.md").read_text()
    assert "## Definitions" in report and "accuracy_no_ties" in report
    assert "## Human–human ceiling" in report and "## Fitted tie threshold" in report
    stdout = capsys.readouterr().out
    assert re.search(r"accuracy, no ties +0\.750", stdout) and "human ceiling" in stdout
    assert re.search(r"decided coverage +0\.667", stdout)


def test_cli_output_is_reproducible(files, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(["--pred", str(files["pred"]), "--human", str(files["h1"]), "--out", str(out)]) == 0
    assert (outs[0] / "agreement.json").read_text() == (outs[1] / "agreement.json").read_text()


def test_malformed_line_exits_2_naming_file_and_line(files, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = files["pred"].read_text().splitlines()
    bad.write_text("\n".join([lines[0], "{not json", lines[1]]) + "\n")
    assert main(["--pred", str(bad), "--human", str(files["h1"]), "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}:2: invalid JSON" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cut_off_last_line_is_an_error_not_silently_dropped(files, tmp_path, capsys):
    cut = tmp_path / "cut.jsonl"
    text = files["h1"].read_text()
    cut.write_text(text[: len(text) - 40])
    assert main(["--pred", str(files["pred"]), "--human", str(cut), "--out", str(tmp_path / "o")]) == 2
    assert f"{cut}:3:" in capsys.readouterr().err


def test_invalid_record_names_the_field(files, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    record = json.loads(files["h1"].read_text().splitlines()[0])
    record["segments"][0]["label"] = "C"
    bad.write_text(json.dumps(record) + "\n")
    assert main(["--pred", str(files["pred"]), "--human", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}:1: segments.0.label" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda d: d / "missing.jsonl", "no such file"),
        (lambda d: write_jsonl(d / "empty.jsonl", []), "holds no records"),
        (lambda d: write_jsonl(d / "other.jsonl", [make_record("zz", [("A",)])]), "no pair_id in common"),
    ],
)
def test_bad_human_input_exits_2(files, tmp_path, capsys, make_input, message):
    human = make_input(tmp_path)
    assert main(["--pred", str(files["pred"]), "--human", str(human), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and str(human) in err


def test_help_and_negative_bootstrap(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--fit-tie-threshold" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--pred", "p", "--human", "h", "--out", "o", "--bootstrap", "-1"])
    assert exc.value.code == 2


@pytest.mark.parametrize("pred_bounds", [None, [(0, 5), (5, 20)]], ids=["all-tie", "no-segment-lines-up"])
def test_degenerate_result_still_renders_without_nan(tmp_path, pred_bounds):
    human = [make_record("t", [("tie",), ("tie",)], video_label="tie")]
    pred = [
        make_record(
            "t",
            [("tie", 0.2, 0.2), ("tie", 0.1, 0.1)],
            video_label="tie",
            video_score=0.0,
            bounds=pred_bounds,
        )
    ]
    result = compute_agreement(pred, [human], bootstrap=100)
    paths = write_report(result, tmp_path / "deep" / "dir")
    text = paths["json"].read_text()
    assert "NaN" not in text and json.loads(text)["segment"]["accuracy_no_ties"] is None
    for key in ("confusion", "coverage", "segment_position"):
        assert_valid_png(paths[key])
    assert "n/a" in headline(result)
    assert "No non-tie human segment" in paths["report"].read_text()


def test_report_lists_join_problems(tmp_path):
    pred = [*pred_set(), make_record("only_pred", [("A", 0.9, 0.0)])]
    human = [*human_set(), make_record("only_human", [("B",)])]
    result = compute_agreement(pred, [human], bootstrap=0)
    report = write_report(result, tmp_path)["report"].read_text()
    assert "only in pred (1): `only_pred`" in report and "only in human (1): `only_human`" in report
    assert "1 only in pred, 1 only in human" in headline(result)


def test_json_is_finite_everywhere(files):
    result = compute_agreement(
        pred_set(), [human_set(), human_set("ann2", p1_s1="A")], fit_tie_threshold=True
    )

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, float):
            assert math.isfinite(x)
        else:
            assert x is None or isinstance(x, (str, int, bool))

    walk(result)
    json.dumps(result, allow_nan=False)


def test_definitions_cover_every_headline_metric():
    for key in (
        "accuracy_no_ties",
        "accuracy_with_ties",
        "cohen_kappa",
        "krippendorff_alpha",
        "confusion",
        "accuracy_no_ties_ci95",
        "flip_rate",
        "coverage_accuracy",
        "human_ceiling",
        "tie_threshold",
    ):
        assert f"**{key}" in DEFINITIONS_MD
