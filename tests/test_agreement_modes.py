"""labeler.agreement --compare: two label files of the same pairs (frames vs video, with vs without
reference), segment by segment, and against human labels when given."""

from __future__ import annotations

import json

import pytest

from labeler.agreement.compute import main
from labeler.agreement.modes import compare_modes
from labeler.errors import AgreementInputError
from tests.test_agreement import human_set, make_record


def with_prompt(records, prompt_id):
    return [
        r.model_copy(update={"labeler": r.labeler.model_copy(update={"prompt_id": prompt_id})})
        for r in records
    ]


# human:  p1 = A B tie A | p2 = B B A | p3 = tie tie
# frames: p1 = A A tie tie | p2 = B tie A | p3 = A tie      (differs from video at p1s1, p1s3, p2s1)
# video:  p1 = A B tie A   | p2 = B B  A | p3 = A tie      (equal to the human but p3s0)
def frames_set():
    return with_prompt(
        [
            make_record("p1", [("A", 0.8, 0.1), ("A", 0.6, 0.3), ("tie", 0.2, 0.2), ("tie", 0.3, 0.3)]),
            make_record("p2", [("B", 0.1, 0.7), ("tie", 0.2, 0.4), ("A", 0.9, 0.05)]),
            make_record("p3", [("A", 0.7, 0.2), ("tie", 0.1, 0.1)]),
        ],
        "conservative@abcd1234",
    )


def video_set():
    return with_prompt(
        [
            make_record("p1", [("A", 0.8, 0.1), ("B", 0.2, 0.7), ("tie", 0.2, 0.2), ("A", 0.6, 0.3)]),
            make_record("p2", [("B", 0.1, 0.7), ("B", 0.1, 0.8), ("A", 0.9, 0.05)]),
            make_record("p3", [("A", 0.7, 0.2), ("tie", 0.1, 0.1)]),
        ],
        "conservative@abcd1234+video",
    )


def test_modes_are_compared_segment_by_segment():
    result = compare_modes(frames_set(), video_set(), bootstrap=0)
    seg = result["segments"]
    assert seg["n"] == 9 and seg["same_label"] == pytest.approx(6 / 9)
    assert {(d["pair_id"], d["index"]) for d in result["differing_segments"]} == {
        ("p1", 1),
        ("p1", 3),
        ("p2", 1),
    }
    assert seg["confusion_first_vs_second"]["A"]["B"] == 1  # p1 s1: frames A, video B
    # p_a - p_b shifts: p1s1 -0.5-0.3, p1s3 +0.3, p2s1 -0.7+0.2; the rest 0.
    assert seg["mean_margin_shift"] == pytest.approx((-0.8 + 0.3 - 0.5) / 9)
    assert result["inputs"]["second_mode"].endswith("+video")
    assert result["human"] is None


def test_with_human_labels_the_mode_that_wins_where_they_differ_is_named():
    result = compare_modes(frames_set(), video_set(), [human_set()], bootstrap=0)
    wins = result["human"]["segment_wins"]
    assert wins["where_modes_differ"] == {"n": 3, "first_matches_human": 0, "second_matches_human": 3}
    assert wins["better"] == "second"
    # Non-tie human segments: 6; frames right on p1s0, p2s0, p2s2 = 3; video right on all 6.
    assert wins["accuracy_no_ties"] == {"first": 0.5, "second": 1.0, "n": 6}
    assert result["human"]["second"]["accuracy_no_ties"] == 1.0  # the harness's own figure agrees


def test_files_that_share_no_pair_are_refused():
    other = [make_record("zz", [("A", 0.8, 0.1)])]
    with pytest.raises(AgreementInputError, match="no pair_id in common"):
        compare_modes(frames_set(), other)


def test_the_command_line_writes_modes_json(tmp_path, capsys):
    paths = {}
    for name, records in (("frames", frames_set()), ("video", video_set()), ("human", human_set())):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(r.model_dump_json() + "\n" for r in records))
    code = main(
        ["--pred", str(paths["frames"]), "--compare", str(paths["video"]), "--human", str(paths["human"]),
         "--out", str(tmp_path / "out"), "--bootstrap", "0"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "better: second" in out and "same label" in out
    saved = json.loads((tmp_path / "out" / "modes.json").read_text())
    assert saved["human"]["segment_wins"]["better"] == "second"
    with pytest.raises(SystemExit):
        main(["--pred", str(paths["frames"]), "--out", str(tmp_path / "x")])  # neither --human nor --compare
