"""``labeler.agreement --fit-cascade``: accuracy and cost at every escalated share, by hand."""

from __future__ import annotations

import json

import pytest

from labeler.agreement.cascade_fit import fit_cascade
from labeler.agreement.compute import main
from labeler.schemas import LabelerInfo, Usage
from tests.test_agreement import make_record

# Cheap confidences (max p): p1 s0 .9, p1 s1 .4, p2 s0 .5, p2 s1 .8 -> escalation order
# p1s1, p2s0, p2s1, p1s0. Right/wrong against the human labels:
#            human  cheap        vlm
#   p1 s0    A      A  (right)   A   (right)
#   p1 s1    B      tie (wrong)  B   (right)
#   p2 s0    tie    A  (wrong)   tie (right)
#   p2 s1    A      A  (right)   B   (wrong)
HUMAN = [
    make_record("p1", [("A",), ("B",)], annotator="h"),
    make_record("p2", [("tie",), ("A",)], annotator="h"),
]
CHEAP = [
    make_record("p1", [("A", 0.9, 0.05), ("tie", 0.3, 0.3)]),
    make_record("p2", [("A", 0.5, 0.1), ("A", 0.8, 0.1)]),
]


def _vlm(pair_id: str, segs: list[tuple], tokens: tuple[int, int]):
    record = make_record(pair_id, segs)
    return record.model_copy(
        update={
            "labeler": LabelerInfo(judge="openai", model="some-vlm"),
            "usage": Usage(input_tokens=tokens[0], output_tokens=tokens[1]),
        }
    )


VLM = [
    _vlm("p1", [("A", 0.8, 0.1), ("B", 0.1, 0.8)], (1000, 100)),  # 500 in / 50 out per segment
    _vlm("p2", [("tie", 0.1, 0.1), ("B", 0.2, 0.7)], (2000, 0)),  # 1000 in per segment
]


def test_accuracy_and_cost_at_every_share_by_hand():
    fit = fit_cascade(CHEAP, VLM, HUMAN, target=0.9, price=(1.0, 2.0))
    curve = {p["escalated"]: p for p in fit["curve"]}
    assert [curve[k]["accuracy_with_ties"] for k in range(5)] == pytest.approx([0.5, 0.75, 1.0, 0.75, 0.75])
    # no ties: human-decided p1s0, p1s1, p2s1; the cheap tie at p1s1 has margin 0 -> half credit
    assert curve[0]["accuracy_no_ties"] == pytest.approx(2.5 / 3)
    assert curve[2]["accuracy_no_ties"] == pytest.approx(1.0) and curve[3][
        "accuracy_no_ties"
    ] == pytest.approx(2 / 3)
    assert curve[0]["decided_coverage"] == pytest.approx(2 / 3) and curve[1]["decided_coverage"] == 1.0
    # USD: a p1 segment costs (500 + 2 * 50) / 1e6, a p2 one 1000 / 1e6
    assert curve[2]["cost_usd"] == pytest.approx(0.0006 + 0.001)
    assert fit["vlm_alone"]["cost_usd"] == pytest.approx(0.0032)
    assert fit["best"]["escalated"] == 2 and fit["best"]["share"] == 0.5
    assert fit["cheap_alone"]["accuracy_with_ties"] == 0.5


def test_target_metric_and_unreachable_target():
    assert fit_cascade(CHEAP, VLM, HUMAN, target=0.8, metric="accuracy_no_ties")["best"]["escalated"] == 0
    # both decided: the cheap judge decides p1s0 and p2s1, both right, so nothing needs escalating
    assert (
        fit_cascade(CHEAP, VLM, HUMAN, target=1.0, metric="accuracy_both_decided")["best"]["escalated"] == 0
    )
    worse = [VLM[0].model_copy(update={"segments": [VLM[0].segments[0], CHEAP[0].segments[1]]}), VLM[1]]
    missed = fit_cascade(CHEAP, worse, HUMAN, target=0.9)  # with ties at best 0.75 now (k = 2)
    assert missed["best"] is None and max(p["accuracy_with_ties"] for p in missed["curve"]) == 0.75
    unpriced = fit_cascade(CHEAP, VLM, HUMAN, target=0.9)
    assert not unpriced["priced"] and unpriced["best"]["input_tokens"] == pytest.approx(1500)


def _write(path, records):
    path.write_text("".join(r.model_dump_json() + "\n" for r in records))
    return str(path)


def test_cli_writes_the_report_and_the_plot(tmp_path, capsys):
    cheap, vlm = _write(tmp_path / "cheap.jsonl", CHEAP), _write(tmp_path / "vlm.jsonl", VLM)
    human = _write(tmp_path / "human.jsonl", HUMAN)
    out = tmp_path / "report"
    code = main(["--fit-cascade", cheap, vlm, "--human", human, "--out", str(out), "--price", "1,2"])
    assert code == 0
    saved = json.loads((out / "cascade.json").read_text())
    assert saved["best"]["escalated"] == 2
    assert (out / "cascade.png").read_bytes().startswith(b"\x89PNG")
    assert "50.0%" in (out / "cascade.md").read_text() and "cascade.png" in (out / "cascade.md").read_text()
    assert "best: escalate 50.0% (2 segments)" in capsys.readouterr().out


def test_cli_refuses_files_with_nothing_in_common(tmp_path, capsys):
    cheap = _write(tmp_path / "cheap.jsonl", [make_record("zz", [("A", 0.9, 0.05)])])
    vlm, human = _write(tmp_path / "vlm.jsonl", VLM), _write(tmp_path / "human.jsonl", HUMAN)
    assert main(["--fit-cascade", cheap, vlm, "--human", human, "--out", str(tmp_path / "r")]) == 2
    assert "no segment is labeled in all three files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--human", human, "--out", str(tmp_path / "r")])  # neither --pred nor --fit-cascade
