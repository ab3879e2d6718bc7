"""Every agreement metric against numbers computed by hand on small fixtures (arithmetic in comments)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from labeler.agreement.compute import AgreementInputError, compute_agreement
from labeler.agreement.metrics import coverage_accuracy, forced_choice_credit, krippendorff_alpha
from labeler.schemas import DensePreferenceRecord, video_level

SEG_LEN = 10


def make_record(
    pair_id: str,
    segs: list[tuple],
    *,
    video_label: str | None = None,
    video_score: float | None = None,
    bounds: list[tuple[int, int]] | None = None,
    annotator: str | None = None,
) -> DensePreferenceRecord:
    """``segs``: (label,) for one-hot human labels, (label, p_a, p_b) or (label, p_a, p_b, votes)."""
    bounds = bounds or [(i * SEG_LEN, (i + 1) * SEG_LEN) for i in range(len(segs))]
    segments = []
    for i, (spec, (start, end)) in enumerate(zip(segs, bounds, strict=True)):
        label = spec[0]
        if len(spec) == 1:  # one-hot, as a human file carries
            p_a, p_b = float(label == "A"), float(label == "B")
        else:
            p_a, p_b = spec[1], spec[2]
        votes = (
            [{"order": o, "label": lab} for o, lab in zip(("ab", "ba"), spec[3], strict=True)]
            if len(spec) > 3
            else []
        )
        segments.append(
            {
                "index": i,
                "start_frame": start,
                "end_frame": end,
                "start_s": start / 10,
                "end_s": end / 10,
                "label": label,
                "p_a": p_a,
                "p_b": p_b,
                "p_tie": 1.0 - p_a - p_b,
                "votes": votes,
            }
        )
    record = DensePreferenceRecord.model_validate(
        {
            "pair_id": pair_id,
            "prompt": "p",
            "video_a": "a.mp4",
            "video_b": "b.mp4",
            "fps": 10.0,
            "num_frames": bounds[-1][1],
            "segments": segments,
            "video_label": "tie",
            "video_score": 0.0,
            "labeler": {"judge": "human" if annotator else "test", "annotator": annotator},
        }
    )
    auto_label, auto_score = video_level(record.segments)
    return record.model_copy(
        update={
            "video_label": video_label or auto_label,
            "video_score": auto_score if video_score is None else video_score,
        }
    )


# The main fixture. Per segment: human label, prediction (label, p_a, p_b), forced choice, credit.
#   p1 s0  A  | A   .8/.1  -> A   1      exact yes
#   p1 s1  B  | A   .6/.3  -> A   0      exact no      votes ab=A ba=B (flip)
#   p1 s2  tie| tie .2/.2  ->  (human tie: not in no-ties)  exact yes
#   p1 s3  A  | tie .3/.3  -> 0   0.5    exact no      votes ab=A ba=A
#   p2 s0  B  | B   .1/.7  -> B   1      exact yes
#   p2 s1  B  | tie .2/.4  -> B   1      exact no
#   p2 s2  A  | A   .9/.05 -> A   1      exact yes
#   p3 s0  tie| A   .7/.2  ->  (human tie)             exact no
#   p3 s1  tie| tie .1/.1  ->  (human tie)             exact yes
def human_set(annotator: str = "ann1", p1_s1: str = "B") -> list[DensePreferenceRecord]:
    return [
        make_record("p1", [("A",), (p1_s1,), ("tie",), ("A",)], video_label="A", annotator=annotator),
        make_record("p2", [("B",), ("B",), ("A",)], video_label="B", annotator=annotator),
        make_record("p3", [("tie",), ("tie",)], video_label="tie", annotator=annotator),
    ]


def pred_set() -> list[DensePreferenceRecord]:
    return [
        make_record(
            "p1",
            [("A", 0.8, 0.1), ("A", 0.6, 0.3, ("A", "B")), ("tie", 0.2, 0.2), ("tie", 0.3, 0.3, ("A", "A"))],
            video_label="tie",
            video_score=0.1,
        ),  # video: tie, score > 0 -> forced A
        make_record(
            "p2", [("B", 0.1, 0.7), ("tie", 0.2, 0.4), ("A", 0.9, 0.05)], video_label="B", video_score=-0.3
        ),
        make_record("p3", [("A", 0.7, 0.2), ("tie", 0.1, 0.1)], video_label="A", video_score=0.3),
    ]


@pytest.fixture(scope="module")
def result() -> dict:
    return compute_agreement(pred_set(), [human_set()], bootstrap=1000, seed=0)


def test_segment_accuracies_match_hand_count(result):
    seg = result["segment"]
    assert seg["n"] == 9
    assert seg["n_no_ties"] == 6
    assert seg["accuracy_no_ties"] == pytest.approx(4.5 / 6)  # 1 + 0 + 0.5 + 1 + 1 + 1
    assert seg["accuracy_with_ties"] == pytest.approx(5 / 9)  # p1s0 p1s2 p2s0 p2s2 p3s1


def test_confusion_rows_are_human_columns_pred(result):
    assert result["segment"]["confusion"] == {
        "A": {"A": 2, "B": 0, "tie": 1},  # p1s0, p2s2 | p1s3
        "B": {"A": 1, "B": 1, "tie": 1},  # p1s1 | p2s0 | p2s1
        "tie": {"A": 1, "B": 0, "tie": 2},  # p3s0 | p1s2, p3s1
    }


def test_cohen_kappa_by_hand_and_equal_to_sklearn(result):
    # p_o = 5/9; human marginals A3 B3 tie3, pred A4 B1 tie4 -> p_e = (12 + 3 + 12) / 81 = 1/3
    # kappa = (5/9 - 1/3) / (1 - 1/3) = 1/3
    assert result["segment"]["cohen_kappa"] == pytest.approx(1 / 3)
    human = [s.label for r in human_set() for s in r.segments]
    pred = [s.label for r in pred_set() for s in r.segments]
    assert result["segment"]["cohen_kappa"] == pytest.approx(cohen_kappa_score(human, pred))


def test_krippendorff_ordinal_alpha_by_hand(result):
    # Coincidences (order B < tie < A): o[A,A]=4 o[B,B]=2 o[t,t]=4, o[A,t]=2 o[A,B]=1 o[B,t]=1 (both ways).
    # n_B=4 n_t=7 n_A=7, n=18. Ordinal distances: d(B,t)=(4+7-5.5)^2=30.25, d(t,A)=(14-7)^2=49,
    # d(B,A)=(18-5.5)^2=156.25. D_o = 2*(30.25 + 2*49 + 156.25) = 569;
    # D_e = 2*(4*7*30.25 + 7*7*49 + 4*7*156.25)/17 = 15246/17 -> alpha = 1 - 569*17/15246 = 5573/15246.
    assert result["segment"]["krippendorff_alpha"] == pytest.approx(5573 / 15246)


def test_krippendorff_alpha_is_ordinal_not_nominal():
    # Same number of disagreements, but B-vs-A is further apart than B-vs-tie on the ordinal scale.
    human = np.array([1, -1, 0, 1, -1, 0])
    near = np.array([1, 0, 0, 1, -1, 0])  # one B called tie
    far = np.array([1, 1, 0, 1, -1, 0])  # one B called A
    assert krippendorff_alpha(human, near) > krippendorff_alpha(human, far)


def test_forced_choice_half_credit_and_label_precedence():
    human = np.array([1, 1, 1, -1, 1])
    pred = np.array([0, 0, 0, 0, 1])
    margin = np.array([0.2, -0.2, 0.0, -0.1, -0.5])  # last: label A wins over a negative margin
    assert forced_choice_credit(human, pred, margin).tolist() == [1.0, 0.0, 0.5, 1.0, 1.0]


def test_video_level_with_tie_fallback_to_video_score(result):
    vid = result["video"]
    # p1: human A, pred tie with score +0.1 -> A: 1; p2: B vs B: 1; p3: human tie -> not counted.
    assert (vid["n"], vid["n_no_ties"]) == (3, 2)
    assert vid["accuracy_no_ties"] == pytest.approx(1.0)
    assert vid["accuracy_with_ties"] == pytest.approx(1 / 3)  # only p2 matches exactly
    assert vid["confusion"]["A"]["tie"] == 1 and vid["confusion"]["tie"]["A"] == 1


def test_video_score_zero_gets_half_credit_and_negative_score_is_b():
    human = [make_record("v1", [("A",)], video_label="A"), make_record("v2", [("A",)], video_label="A")]
    pred = [
        make_record("v1", [("tie", 0.3, 0.3)], video_label="tie", video_score=0.0),
        make_record("v2", [("tie", 0.3, 0.3)], video_label="tie", video_score=-0.2),
    ]
    res = compute_agreement(pred, [human], bootstrap=0)
    assert res["video"]["accuracy_no_ties"] == pytest.approx((0.5 + 0.0) / 2)


def test_bootstrap_ci_over_pairs(result):
    # Only p1 (credit 1.5 over 3) and p2 (3 over 3) have non-tie human segments. Resampling two pairs
    # gives 0.5 (p1,p1; prob 1/4), 0.75 or 1.0 (p2,p2; prob 1/4): the 2.5/97.5 percentiles are 0.5, 1.0.
    assert result["segment"]["accuracy_no_ties_ci95"] == pytest.approx([0.5, 1.0])
    assert result["bootstrap"] == {"resamples": 1000, "seed": 0, "unit": "pair"}


def test_bootstrap_reproducible_by_seed_and_contains_estimate():
    rng = np.random.default_rng(7)
    labels = ["A", "B", "tie"]
    human, pred = [], []
    for k in range(40):
        h = [labels[i] for i in rng.integers(0, 3, size=4)]
        agree = rng.random(4) < 0.7
        p = [lab if ok else labels[(labels.index(lab) + 1) % 3] for lab, ok in zip(h, agree, strict=True)]
        human.append(make_record(f"q{k}", [(x,) for x in h]))
        pred.append(make_record(f"q{k}", [(x,) for x in p]))
    a = compute_agreement(pred, [human], bootstrap=500, seed=3)
    b = compute_agreement(pred, [human], bootstrap=500, seed=3)
    c = compute_agreement(pred, [human], bootstrap=500, seed=4)
    for level in ("segment", "video"):
        ci = a[level]["accuracy_no_ties_ci95"]
        assert ci == b[level]["accuracy_no_ties_ci95"]
        assert ci[0] <= a[level]["accuracy_no_ties"] <= ci[1]
        assert ci[0] < ci[1]
    assert a["segment"]["accuracy_no_ties_ci95"] != c["segment"]["accuracy_no_ties_ci95"]


def test_flip_rate_from_votes(result):
    # Votes only on p1 s1 (A vs B: flip) and p1 s3 (A vs A): 1 flip over 2 segments.
    assert result["flip_rate"] == pytest.approx(0.5)
    assert result["flip_rate_n"] == 2


def test_flip_rate_null_without_votes():
    res = compute_agreement(
        [make_record("p", [("A", 0.6, 0.2)])], [[make_record("p", [("A",)])]], bootstrap=0
    )
    assert res["flip_rate"] is None
    assert any("flip_rate" in n for n in res["notes"])


def test_coverage_accuracy_curve(result):
    # Non-tie human segments by confidence: p2s2 .85 (1), p1s0 .7 (1), p2s0 .6 (1), p1s1 .3 (0),
    # p2s1 .2 (1), p1s3 0 (0.5); running credit 1 2 3 3 4 4.5. keep = ceil(6c):
    # c=.1..1 -> keep 1 2 2 3 3 4 5 5 6 6
    expected = [1.0, 1.0, 1.0, 1.0, 1.0, 3 / 4, 4 / 5, 4 / 5, 4.5 / 6, 4.5 / 6]
    curve = result["coverage_accuracy"]
    assert [c for c, _ in curve] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert [a for _, a in curve] == pytest.approx(expected)


def test_coverage_uses_exact_ceil_and_stable_order():
    # n = 10 at coverage 0.3 keeps exactly 3 items (a float ceil of 0.3*10 would keep 4).
    credit = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=float)
    conf = np.linspace(1.0, 0.1, 10)
    assert coverage_accuracy(credit, conf)[2] == [0.3, 1.0]
    # Equal confidence: the first in input order is kept first.
    assert coverage_accuracy(np.array([0.0, 1.0]), np.array([0.5, 0.5]))[4] == [0.5, 0.0]


def test_segment_position_accuracy(result):
    rows = {r["index"]: r for r in result["segment_position"]}
    # index 0: p1 A/A(1) p2 B/B(1) p3 tie/A -> no-ties 2/2, exact 2/3
    assert (rows[0]["n"], rows[0]["n_no_ties"]) == (3, 2)
    assert rows[0]["accuracy_no_ties"] == 1.0 and rows[0]["accuracy_with_ties"] == pytest.approx(2 / 3)
    # index 1: p1 B/A(0) p2 B/tie->B(1) p3 tie/tie -> 1/2, exact 1/3
    assert rows[1]["accuracy_no_ties"] == 0.5 and rows[1]["accuracy_with_ties"] == pytest.approx(1 / 3)
    # index 3: p1 A/tie with p_a == p_b -> 0.5, exact 0
    assert (rows[3]["n"], rows[3]["accuracy_no_ties"], rows[3]["accuracy_with_ties"]) == (1, 0.5, 0.0)


def test_all_tie_labels_give_nulls_not_nan():
    human = [make_record("t1", [("tie",), ("tie",)], video_label="tie")]
    pred = [make_record("t1", [("tie", 0.2, 0.2), ("tie", 0.1, 0.1)], video_label="tie", video_score=0.0)]
    res = compute_agreement(pred, [human], bootstrap=100)
    seg = res["segment"]
    assert seg["n"] == 2 and seg["n_no_ties"] == 0
    assert seg["accuracy_no_ties"] is None and seg["accuracy_no_ties_ci95"] is None
    assert seg["accuracy_with_ties"] == 1.0
    assert seg["cohen_kappa"] is None and seg["krippendorff_alpha"] is None  # one class: undefined
    assert res["coverage_accuracy"] == []
    assert any("cohen_kappa is undefined" in n for n in res["notes"])


def test_pairs_on_one_side_only_are_counted_and_listed(result):
    pred = [*pred_set(), make_record("only_pred", [("A", 0.9, 0.0)])]
    human = [make_record("only_human", [("B",)]), *human_set()]
    res = compute_agreement(pred, [human], bootstrap=0)
    join = res["join"]
    assert join["only_in_pred"] == ["only_pred"] and join["only_in_human"] == ["only_human"]
    assert (join["n_only_in_pred"], join["n_only_in_human"], join["n_pairs_joined"]) == (1, 1, 3)
    assert res["segment"]["accuracy_no_ties"] == result["segment"]["accuracy_no_ties"]


def test_mismatched_boundaries_are_excluded_and_listed():
    human = [make_record("m", [("A",), ("B",), ("A",)], bounds=[(0, 10), (10, 20), (20, 40)])]
    pred = [
        make_record(
            "m", [("A", 0.9, 0.0), ("A", 0.9, 0.0), ("A", 0.9, 0.0)], bounds=[(0, 10), (10, 25), (25, 40)]
        ),
    ]
    res = compute_agreement(pred, [human], bootstrap=0)
    # Only segment 0 lines up: A vs A.
    assert res["segment"]["n"] == 1 and res["segment"]["accuracy_no_ties"] == 1.0
    assert res["join"]["boundary_mismatches"] == [
        {"pair_id": "m", "index": 1, "pred": [10, 25], "human": [10, 20]},
        {"pair_id": "m", "index": 2, "pred": [25, 40], "human": [20, 40]},
    ]
    assert res["video"]["n"] == 1  # the pair still counts at video level


def test_different_segment_counts_are_listed():
    human = [make_record("c", [("A",), ("B",), ("A",)])]
    pred = [make_record("c", [("A", 0.9, 0.0), ("B", 0.0, 0.9)])]
    res = compute_agreement(pred, [human], bootstrap=0)
    assert res["join"]["segment_count_mismatches"] == [{"pair_id": "c", "n_pred": 2, "n_human": 3}]
    assert res["join"]["boundary_mismatches"] == [
        {"pair_id": "c", "index": 2, "pred": None, "human": [20, 30]}
    ]
    assert res["segment"]["n"] == 2 and res["segment"]["accuracy_with_ties"] == 1.0


@pytest.mark.parametrize(
    ("pred", "humans", "message"),
    [
        ([], [[make_record("p", [("A",)])]], "pred holds no records"),
        ([make_record("p", [("A",)])], [[]], "human1 holds no records"),
        ([make_record("p", [("A",)])], [], "at least one --human"),
        ([make_record("p", [("A",)])], [[make_record("q", [("A",)])]], "no pair_id in common"),
    ],
)
def test_unusable_inputs_raise_clear_errors(pred, humans, message):
    with pytest.raises(AgreementInputError, match=message):
        compute_agreement(pred, humans, bootstrap=0)


def test_several_annotators_in_one_file_is_an_error():
    human = [make_record("p", [("A",)], annotator="alice"), make_record("p", [("B",)], annotator="bob")]
    with pytest.raises(
        AgreementInputError, match=r"several records for pair_id 'p' \(labelers: alice, bob\)"
    ):
        compute_agreement([make_record("p", [("A", 0.9, 0.0)])], [human], bootstrap=0)


def test_human_ceiling_and_per_human_with_two_files(result):
    second = human_set("ann2", p1_s1="A")  # ann2 differs from ann1 on p1 s1 only (A instead of B)
    res = compute_agreement(pred_set(), [human_set(), second], bootstrap=0, human_names=["h1", "h2"])
    ceiling = res["human_ceiling"]["segment"]
    # ann2 vs ann1 over ann1's 6 non-tie segments: all match except p1 s1 -> 5/6; exact 8/9.
    assert ceiling["accuracy_no_ties"] == pytest.approx(5 / 6)
    assert ceiling["accuracy_with_ties"] == pytest.approx(8 / 9)
    assert res["human_ceiling"]["pairs"][0]["reference"] == "h1"
    assert [p["human"] for p in res["per_human"]] == ["h1", "h2"]
    assert res["per_human"][0]["segment"]["accuracy_no_ties"] == result["segment"]["accuracy_no_ties"]
    # pred vs ann2: p1 s1 pred A now matches -> (1 + 1 + 0.5 + 1 + 1 + 1) / 6
    assert res["per_human"][1]["segment"]["accuracy_no_ties"] == pytest.approx(5.5 / 6)
    assert res["segment"] == result["segment"] | {"accuracy_no_ties_ci95": None}  # main = vs first file


def test_human_ceiling_averages_over_three_annotators():
    third = human_set("ann3", p1_s1="tie")
    res = compute_agreement(pred_set(), [human_set(), human_set("ann2", p1_s1="A"), third], bootstrap=0)
    pairs = res["human_ceiling"]["pairs"]
    assert len(pairs) == 3 and res["human_ceiling"]["segment"]["averaged_over"] == 3
    mean = np.mean([p["segment"]["accuracy_with_ties"] for p in pairs])
    assert res["human_ceiling"]["segment"]["accuracy_with_ties"] == pytest.approx(mean)


def test_fit_tie_threshold_recovers_known_threshold():
    # Every pair: predictions are always A, with margin m; the human calls it a tie when m < 0.3.
    margins = [0.05, 0.1, 0.15, 0.3, 0.5, 0.8]
    human = [make_record(f"f{k}", [("tie" if m < 0.3 else "A",) for m in margins]) for k in range(4)]
    pred = [make_record(f"f{k}", [("A", m, 0.0) for m in margins]) for k in range(4)]
    res = compute_agreement(pred, [human], bootstrap=0, fit_tie_threshold=True, seed=1)
    fit = res["tie_threshold"]
    # Candidates 0, .05, .1, .15, .3, ...: the smallest one turning all three small margins into ties is .3.
    assert fit["threshold"] == pytest.approx(0.3)
    assert fit["fit_accuracy_with_ties"] == 1.0 and fit["heldout_accuracy_with_ties"] == 1.0
    assert fit["heldout_baseline_accuracy_with_ties"] == pytest.approx(0.5)  # 3 of 6 were A already
    assert (fit["n_fit_pairs"], fit["n_heldout_pairs"]) == (2, 2)


def test_tie_threshold_absent_unless_asked(result):
    assert result["tie_threshold"] is None


def test_decided_coverage_and_accuracy_both_decided_by_hand(result):
    # Non-tie human segments: p1 s0 A|A, p1 s1 B|A, p1 s3 A|tie, p2 s0 B|B, p2 s1 B|tie, p2 s2 A|A.
    # The prediction decides 4 of 6 (coverage 0.667); of those 4, three match (0.75), while
    # accuracy_no_ties gives the two predicted ties 0.5 and 1 from their margins: 4.5 / 6 = 0.75.
    seg = result["segment"]
    assert seg["decided_coverage"] == pytest.approx(4 / 6)
    assert seg["n_both_decided"] == 4
    assert seg["accuracy_both_decided"] == pytest.approx(3 / 4)
    # Video: human A, B, tie vs predicted tie, B, A -> one non-tie human video decided (p2), right.
    assert result["video"]["decided_coverage"] == pytest.approx(1 / 2)
    assert result["video"]["accuracy_both_decided"] == 1.0


def test_a_judge_that_ties_every_hard_segment_is_exposed():
    # Humans decide every segment; the judge ties all but one, with margins of the right sign.
    human = [make_record(f"h{k}", [("A",), ("B",), ("A",), ("B",)]) for k in range(3)]
    pred = [
        make_record(f"h{k}", [("A", 0.9, 0.05), ("tie", 0.2, 0.3), ("tie", 0.3, 0.2), ("tie", 0.25, 0.3)])
        for k in range(3)
    ]
    seg = compute_agreement(pred, [human], bootstrap=0)["segment"]
    assert seg["accuracy_no_ties"] == 1.0  # the flattering figure
    assert seg["decided_coverage"] == pytest.approx(0.25) and seg["accuracy_both_decided"] == 1.0


def test_fit_tie_threshold_can_lower_the_margin():
    # The judge calls every |margin| < 0.4 a tie; humans decide everything from 0.1 up, always
    # with the margin's sign, and tie only the 0.02 ones. The best margin lies between: 0.1.
    margins = [0.02, -0.02, 0.1, -0.15, 0.3, -0.5, 0.8]
    human = [
        make_record(f"g{k}", [("tie" if abs(m) < 0.05 else "A" if m > 0 else "B",) for m in margins])
        for k in range(4)
    ]
    pred = [
        make_record(
            f"g{k}",
            [
                ("tie" if abs(m) < 0.4 else "A" if m > 0 else "B", max(m, 0) + 0.05, max(-m, 0) + 0.05)
                for m in margins
            ],
        )
        for k in range(4)
    ]
    fit = compute_agreement(pred, [human], bootstrap=0, fit_tie_threshold=True, seed=1)["tie_threshold"]
    assert fit["threshold"] == pytest.approx(0.1)  # below the judge's own 0.4: lowered
    assert fit["heldout_accuracy_with_ties"] == 1.0
    assert fit["heldout_baseline_accuracy_with_ties"] == pytest.approx(4 / 7)  # 0.1, -0.15, 0.3 were ties
    assert (fit["heldout_tie_to_decided"], fit["heldout_decided_to_tie"]) == (2 * 3, 0)
