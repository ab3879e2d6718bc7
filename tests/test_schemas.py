"""Data contracts (docs/design.md §2.1, §2.3, §2.4): manifests, dense preference records, judge I/O."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from labeler.schemas import (
    DensePreferenceRecord,
    ErrorRecord,
    Judgment,
    ManifestEntry,
    ManifestLineError,
    Segment,
    SegmentRequest,
    Vote,
    iter_manifest,
    iter_records,
    read_manifest,
    read_records,
    video_level,
)

# The record example of docs/design.md §2.3, verbatim except for the elided prompt and paths.
DESIGN_EXAMPLE = """
{"pair_id": "p0001", "prompt": "a man does a handstand on a beach", "video_a": "a.mp4", "video_b": "b.mp4",
 "fps": 24.0, "num_frames": 121,
 "segments": [
   {"index": 0, "start_frame": 0, "end_frame": 24, "start_s": 0.0, "end_s": 1.0,
    "label": "A", "p_a": 0.81, "p_b": 0.07, "p_tie": 0.12,
    "votes": [{"order": "ab", "label": "A"}, {"order": "ba", "label": "A"}],
    "consistent": true, "rationale": "B shows a smeared hand in 0.5 s"}],
 "video_label": "A", "video_score": 0.42,
 "labeler": {"judge": "openai", "model": "gpt-4o-mini",
             "prompt_id": "segment_judge@3f2a9c1e", "frames_per_segment": 4,
             "swap": true, "densepref_version": "0.1.0"},
 "usage": {"input_tokens": 3120, "output_tokens": 210, "cache_hits": 0}}
"""

MANIFEST_LINE = {
    "pair_id": "p0001",
    "prompt": "a man does a handstand",
    "video_a": "a.mp4",
    "video_b": "b.mp4",
}


def seg(
    index: int, start: int, end: int, label: str = "A", p: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> dict:
    return {
        "index": index,
        "start_frame": start,
        "end_frame": end,
        "start_s": start / 24,
        "end_s": end / 24,
        "label": label,
        "p_a": p[0],
        "p_b": p[1],
        "p_tie": p[2],
    }


def record(**overrides) -> dict:
    base = {
        "pair_id": "p1",
        "prompt": "a dog runs",
        "video_a": "a.mp4",
        "video_b": "b.mp4",
        "fps": 24.0,
        "num_frames": 72,
        "segments": [
            seg(0, 0, 24),
            seg(1, 24, 48, "tie", (0.2, 0.2, 0.6)),
            seg(2, 48, 72, "B", (0.1, 0.7, 0.2)),
        ],
        "video_label": "tie",
        "video_score": 0.0,
        "labeler": {"judge": "metrics"},
    }
    base.update(overrides)
    return base


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- ManifestEntry


@pytest.mark.parametrize("missing", ["pair_id", "prompt", "video_a", "video_b"])
def test_manifest_entry_requires_field(missing):
    data = {k: v for k, v in MANIFEST_LINE.items() if k != missing}
    with pytest.raises(ValidationError, match=missing):
        ManifestEntry.model_validate(data)


def test_manifest_entry_optional_fields_default():
    entry = ManifestEntry.model_validate(MANIFEST_LINE)
    assert (entry.reference, entry.segment_seconds, entry.meta) == (None, None, {})


def test_manifest_entry_rejects_unknown_field_by_name():
    with pytest.raises(ValidationError) as info:
        ManifestEntry.model_validate({**MANIFEST_LINE, "colour": "red"})
    assert "colour" in str(info.value)
    assert "Extra inputs are not permitted" in str(info.value)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_manifest_entry_rejects_non_positive_or_infinite_segment_seconds(bad):
    with pytest.raises(ValidationError, match="segment_seconds"):
        ManifestEntry.model_validate({**MANIFEST_LINE, "segment_seconds": bad})


def test_resolved_makes_relative_paths_absolute_and_keeps_absolute_ones(tmp_path):
    absolute = str(tmp_path / "elsewhere" / "b.mp4")
    entry = ManifestEntry.model_validate(
        {**MANIFEST_LINE, "video_a": "clips/a.mp4", "video_b": absolute, "reference": "../gt.mp4"}
    )
    out = entry.resolved(tmp_path / "job")
    assert out.video_a == str((tmp_path / "job" / "clips" / "a.mp4").resolve())
    assert out.video_b == absolute
    assert out.reference == str((tmp_path / "gt.mp4").resolve())
    assert entry.video_a == "clips/a.mp4"  # a copy: the original is unchanged
    assert ManifestEntry.model_validate(MANIFEST_LINE).resolved(tmp_path).reference is None


# --------------------------------------------------------------------------- iter_manifest / read_manifest


def test_iter_manifest_skips_blank_and_comment_lines_and_resolves(tmp_path):
    path = write_lines(
        tmp_path / "m.jsonl",
        [
            "# a comment",
            "",
            json.dumps(MANIFEST_LINE),
            "   ",
            "  # indented comment",
            json.dumps({**MANIFEST_LINE, "pair_id": "p2"}),
        ],
    )
    items = list(iter_manifest(path))
    assert [e.pair_id for e in items] == ["p0001", "p2"]
    assert all(isinstance(e, ManifestEntry) for e in items)
    assert items[0].video_a == str((tmp_path / "a.mp4").resolve())


def test_iter_manifest_bad_json_fails_alone_with_line_number(tmp_path):
    path = write_lines(
        tmp_path / "m.jsonl",
        [json.dumps(MANIFEST_LINE), '{"pair_id": "p2", ', json.dumps({**MANIFEST_LINE, "pair_id": "p3"})],
    )
    items = list(iter_manifest(path))
    assert [type(i) for i in items] == [ManifestEntry, ManifestLineError, ManifestEntry]
    err = items[1]
    assert (err.line, err.pair_id, err.type) == (2, "<line 2>", "ManifestJSONError")
    assert err.message.startswith("line 2: invalid JSON")
    assert items[2].pair_id == "p3"


@pytest.mark.parametrize("line", ["[1, 2]", '"a string"', "42", "null"])
def test_iter_manifest_json_that_is_not_an_object(tmp_path, line):
    path = write_lines(tmp_path / "m.jsonl", [line])
    (err,) = iter_manifest(path)
    assert isinstance(err, ManifestLineError)
    assert (err.line, err.pair_id, err.type) == (1, "<line 1>", "ManifestValidationError")
    assert "dictionary" in err.message


def test_iter_manifest_missing_video_b_names_the_field_and_keeps_pair_id(tmp_path):
    line = {k: v for k, v in MANIFEST_LINE.items() if k != "video_b"}
    path = write_lines(tmp_path / "m.jsonl", ["# header", json.dumps(line)])
    (err,) = iter_manifest(path)
    assert (err.line, err.pair_id, err.type) == (2, "p0001", "ManifestValidationError")
    assert "video_b" in err.message and "line 2" in err.message


@pytest.mark.parametrize("pair_id", ['""', "7", "null"])
def test_iter_manifest_placeholder_when_pair_id_is_unusable(tmp_path, pair_id):
    path = write_lines(
        tmp_path / "m.jsonl", ['{"pair_id": ' + pair_id + ', "prompt": "x", "video_a": "a", "video_b": "b"}']
    )
    (err,) = iter_manifest(path)
    assert err.pair_id == "<line 1>"
    assert "pair_id" in err.message


def test_iter_manifest_duplicate_pair_id_errors_on_second_occurrence_only(tmp_path):
    first = {**MANIFEST_LINE, "prompt": "first"}
    second = {**MANIFEST_LINE, "prompt": "second"}
    path = write_lines(
        tmp_path / "m.jsonl",
        [json.dumps(first), json.dumps({**MANIFEST_LINE, "pair_id": "p2"}), json.dumps(second)],
    )
    items = list(iter_manifest(path))
    assert isinstance(items[0], ManifestEntry) and items[0].prompt == "first"
    assert isinstance(items[1], ManifestEntry)
    err = items[2]
    assert (err.line, err.pair_id, err.type) == (3, "p0001", "DuplicatePairId")
    assert "p0001" in err.message


def test_read_manifest_returns_entries_when_all_lines_are_good(tmp_path):
    path = write_lines(
        tmp_path / "m.jsonl", [json.dumps(MANIFEST_LINE), json.dumps({**MANIFEST_LINE, "pair_id": "p2"})]
    )
    assert [e.pair_id for e in read_manifest(path)] == ["p0001", "p2"]


def test_read_manifest_raises_listing_every_bad_line(tmp_path):
    lines = [
        json.dumps(MANIFEST_LINE),
        "{oops",
        json.dumps({**MANIFEST_LINE, "extra": 1, "pair_id": "p3"}),
        json.dumps(MANIFEST_LINE),
    ]
    path = write_lines(tmp_path / "m.jsonl", lines)
    with pytest.raises(ValueError) as info:
        read_manifest(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert len(message.split(" | ")) == 3  # the good first line is not listed
    for expected in ("line 2: invalid JSON", "line 3: extra", "line 4: pair_id 'p0001' repeats"):
        assert expected in message


# --------------------------------------------------------------------------- Segment / DensePreferenceRecord


def test_design_example_record_validates():
    rec = DensePreferenceRecord.model_validate_json(DESIGN_EXAMPLE)
    assert rec.labels == ["A"]
    assert rec.segments[0].votes == [Vote(order="ab", label="A"), Vote(order="ba", label="A")]
    assert rec.labeler.frames_per_segment == 4
    assert rec.usage.input_tokens == 3120


@pytest.mark.parametrize("label", ["C", "a", "b", "TIE", "", None])
def test_segment_rejects_unknown_label(label):
    with pytest.raises(ValidationError, match="label"):
        Segment.model_validate(seg(0, 0, 24, label=label))


def test_vote_rejects_unknown_label_and_order():
    with pytest.raises(ValidationError):
        Vote(order="ab", label="a")
    with pytest.raises(ValidationError):
        Vote(order="ac", label="A")


@pytest.mark.parametrize(
    "probs",
    [
        (1.2, -0.1, -0.1),
        (-0.1, 0.6, 0.5),
        (float("nan"), 0.5, 0.5),
        (0.5, 0.3, 0.1),
        (0.5, 0.5, 0.002),
        (float("inf"), 0, 0),
    ],
)
def test_bad_probabilities_name_the_segment(probs):
    data = record()
    data["segments"][2] = seg(2, 48, 72, "B", probs)
    with pytest.raises(ValidationError, match="segment 2"):
        DensePreferenceRecord.model_validate(data)


def test_probabilities_within_tolerance_are_accepted():
    Segment.model_validate(seg(0, 0, 24, p=(0.5, 0.3, 0.2009)))
    Segment.model_validate(seg(0, 0, 24, p=(1.0, 0.0, 0.0)))


@pytest.mark.parametrize("end", [10, 9, 0])
def test_end_frame_must_be_after_start_frame(end):
    with pytest.raises(ValidationError, match="end_frame"):
        Segment.model_validate(seg(3, 10, end))


def test_segment_end_s_before_start_s():
    with pytest.raises(ValidationError, match="end_s"):
        Segment.model_validate({**seg(0, 0, 24), "start_s": 1.0, "end_s": 0.5})


def test_overlapping_segments_rejected():
    data = record(segments=[seg(0, 0, 24), seg(1, 20, 48), seg(2, 48, 72)])
    with pytest.raises(ValidationError, match=r"segments 0 \[0, 24\) and 1 \[20, 48\) overlap"):
        DensePreferenceRecord.model_validate(data)


def test_out_of_order_segment_indices_rejected():
    data = record(segments=[seg(1, 0, 24), seg(0, 24, 48)])
    with pytest.raises(ValidationError, match="out of order: position 0 holds index 1"):
        DensePreferenceRecord.model_validate(data)


def test_gap_in_index_numbering_rejected():
    data = record(segments=[seg(0, 0, 24), seg(2, 24, 48)])
    with pytest.raises(ValidationError, match="position 1 holds index 2"):
        DensePreferenceRecord.model_validate(data)


def test_last_segment_past_num_frames_rejected():
    with pytest.raises(ValidationError, match="segment 2 ends at frame 72 > num_frames 70"):
        DensePreferenceRecord.model_validate(record(num_frames=70))


def test_record_needs_segments_and_rejects_unknown_fields():
    with pytest.raises(ValidationError, match="segments"):
        DensePreferenceRecord.model_validate(record(segments=[]))
    with pytest.raises(ValidationError, match="colour"):
        DensePreferenceRecord.model_validate(record(colour="red"))
    with pytest.raises(ValidationError, match="video_score"):
        DensePreferenceRecord.model_validate(record(video_score=1.5))


def test_top_level_annotator_is_lifted_into_labeler():
    rec = DensePreferenceRecord.model_validate(record(annotator="alice", labeler={"judge": "human"}))
    assert (rec.labeler.judge, rec.labeler.annotator) == ("human", "alice")
    assert "annotator" not in rec.model_dump(exclude={"labeler"})
    without_labeler = record(annotator="bob")
    del without_labeler["labeler"]
    rec = DensePreferenceRecord.model_validate(without_labeler)
    assert (rec.labeler.judge, rec.labeler.annotator) == ("human", "bob")


def test_labeler_keeps_extra_settings():
    rec = DensePreferenceRecord.model_validate(
        record(labeler={"judge": "hf", "max_side": 448, "layout": "grid"})
    )
    assert rec.labeler.model_dump()["max_side"] == 448


def test_record_round_trips_through_json():
    data = record(reference="gt.mp4", meta={"seed": 3}, usage={"input_tokens": 5, "requests": 2})
    data["segments"][0]["votes"] = [
        {"order": "ba", "label": "A", "p_a": 0.9, "p_b": 0.05, "p_tie": 0.05, "cached": True}
    ]
    data["segments"][1]["consistent"] = False
    data["segments"][1]["note"] = "hard to tell"
    rec = DensePreferenceRecord.model_validate(data)
    again = DensePreferenceRecord.model_validate_json(rec.model_dump_json())
    assert again == rec
    assert again.segments[0].votes[0].cached is True


# --------------------------------------------------------------------------- video_level


def segments_with(*items: tuple[str, float, float, float]) -> list[Segment]:
    return [
        Segment.model_validate(seg(i, 24 * i, 24 * (i + 1), label, (pa, pb, pt)))
        for i, (label, pa, pb, pt) in enumerate(items)
    ]


def test_video_level_majority_over_non_tie_labels_and_mean_score():
    segments = segments_with(
        ("A", 0.8, 0.1, 0.1), ("A", 0.6, 0.3, 0.1), ("B", 0.2, 0.7, 0.1), ("tie", 0.3, 0.3, 0.4)
    )
    label, score = video_level(segments)
    assert label == "A"
    assert score == pytest.approx((0.7 + 0.3 - 0.5 + 0.0) / 4)  # 0.125


def test_video_level_ties_do_not_outvote():
    label, score = video_level(
        segments_with(("tie", 0.2, 0.2, 0.6), ("B", 0.0, 1.0, 0.0), ("tie", 0.1, 0.1, 0.8))
    )
    assert label == "B"
    assert score == pytest.approx(-1.0 / 3)


def test_video_level_equal_counts_is_tie():
    label, score = video_level(
        segments_with(("A", 0.9, 0.1, 0.0), ("B", 0.3, 0.5, 0.2), ("tie", 0.2, 0.2, 0.6))
    )
    assert label == "tie"
    assert score == pytest.approx((0.8 - 0.2 + 0.0) / 3)


def test_video_level_all_ties_is_tie():
    label, score = video_level(segments_with(("tie", 0.4, 0.2, 0.4), ("tie", 0.1, 0.1, 0.8)))
    assert label == "tie"
    assert score == pytest.approx(0.1)


def test_video_level_needs_segments():
    with pytest.raises(ValueError):
        video_level([])


# --------------------------------------------------------------------------- iter_records / read_records


def test_read_records_tolerates_truncated_tail_only_when_asked(tmp_path):
    good = [json.dumps(record(pair_id=f"p{i}")) for i in range(2)]
    path = tmp_path / "out.jsonl"
    path.write_text("\n".join(good) + "\n\n" + json.dumps(record(pair_id="p2"))[:57], encoding="utf-8")
    assert [r.pair_id for r in read_records(path)] == ["p0", "p1"]
    with pytest.raises(ValueError, match=f"{path}:4: invalid JSON"):
        read_records(path, tolerate_truncated_tail=False)


def test_iter_records_corrupt_middle_line_names_path_and_line(tmp_path):
    path = write_lines(
        tmp_path / "out.jsonl",
        [json.dumps(record(pair_id="p0")), '{"pair_id": "p1",', json.dumps(record(pair_id="p2"))],
    )
    records = iter_records(path)
    assert next(records).pair_id == "p0"  # lines before the bad one are still read
    with pytest.raises(ValueError, match=f"{path}:2: invalid JSON"):
        next(records)


def test_iter_records_validation_error_names_line_and_field(tmp_path):
    path = write_lines(tmp_path / "out.jsonl", [json.dumps(record()), json.dumps(record(video_label="X"))])
    with pytest.raises(ValueError, match=f"{path}:2: video_label") as info:
        read_records(path)
    assert isinstance(info.value.__cause__, ValidationError)


# --------------------------------------------------------------------------- ErrorRecord


def test_error_record_shape():
    rec = ErrorRecord.model_validate_json(
        '{"pair_id": "p7", "error": {"type": "VideoMismatchError", "message": "fps"}, "attempts": 3}'
    )
    assert rec.model_dump() == {
        "pair_id": "p7",
        "error": {"type": "VideoMismatchError", "message": "fps"},
        "attempts": 3,
        "line": None,
    }
    assert ErrorRecord(pair_id="<line 4>", error={"type": "t", "message": "m"}, line=4).attempts == 1
    for bad in (
        {"pair_id": "p", "error": {"type": "t"}},
        {"pair_id": "p", "error": {"type": "t", "message": "m"}, "attempts": -1},
        {"pair_id": "p", "error": {"type": "t", "message": "m"}, "extra": 1},
    ):
        with pytest.raises(ValidationError):
            ErrorRecord.model_validate(bad)


# --------------------------------------------------------------------------- Judgment


def test_judgment_validation():
    Judgment(label="tie", p_a=0.25, p_b=0.25, p_tie=0.5, prob_source="logprobs")
    with pytest.raises(ValidationError, match="judgment"):
        Judgment(label="A", p_a=0.9, p_b=0.9, p_tie=0.0)
    with pytest.raises(ValidationError, match="judgment: p_b"):
        Judgment(label="A", p_a=1.0, p_b=math.nan, p_tie=0.0)
    with pytest.raises(ValidationError, match="label"):
        Judgment(label="first", p_a=1.0, p_b=0.0, p_tie=0.0)
    with pytest.raises(ValidationError, match="prob_source"):
        Judgment(label="A", p_a=1.0, p_b=0.0, p_tie=0.0, prob_source="guess")
    with pytest.raises(ValidationError, match="confidence"):
        Judgment(label="A", p_a=1.0, p_b=0.0, p_tie=0.0, confidence=0.9)


@pytest.mark.parametrize(("label", "expected"), [("A", "B"), ("B", "A"), ("tie", "tie")])
def test_judgment_swapped(label, expected):
    original = Judgment(label=label, p_a=0.6, p_b=0.3, p_tie=0.1, rationale="why", raw="{}", input_tokens=9)
    swapped = original.swapped()
    assert swapped.label == expected
    assert (swapped.p_a, swapped.p_b, swapped.p_tie) == (0.3, 0.6, 0.1)
    assert (swapped.rationale, swapped.raw, swapped.input_tokens) == ("why", "{}", 9)
    assert swapped.swapped() == original
    assert original.label == label  # swapping makes a copy


# --------------------------------------------------------------------------- SegmentRequest


def frames(k: int = 4, h: int = 8, w: int = 12, dtype=np.uint8) -> np.ndarray:
    return np.zeros((k, h, w, 3), dtype=dtype)


def test_segment_request_accepts_matching_frames():
    req = SegmentRequest(
        prompt="p",
        frames_first=frames(),
        frames_second=frames(),
        start_s=0.0,
        end_s=1.0,
        reference=frames(h=16),
    )
    assert req.frames_first.shape == (4, 8, 12, 3)


@pytest.mark.parametrize(
    ("first", "second", "reference", "match"),
    [
        (frames(), frames(k=3), None, "differ in shape"),
        (frames(), frames(w=10), None, "differ in shape"),
        (frames(dtype=np.float32), frames(dtype=np.float32), None, "uint8"),
        (frames(), frames(dtype=np.float32), None, "uint8"),
        (np.zeros((8, 12, 3), np.uint8), np.zeros((8, 12, 3), np.uint8), None, r"\[K, H, W, 3\]"),
        (np.zeros((4, 8, 12, 4), np.uint8), np.zeros((4, 8, 12, 4), np.uint8), None, r"\[K, H, W, 3\]"),
        (frames(), frames(), frames(k=5), "reference has 5 frames"),
    ],
    ids=["count", "width", "float-both", "float-second", "ndim", "rgba", "reference-count"],
)
def test_segment_request_rejects_bad_frames(first, second, reference, match):
    with pytest.raises(ValueError, match=match):
        SegmentRequest(
            prompt="p", frames_first=first, frames_second=second, start_s=0.0, end_s=1.0, reference=reference
        )


# --------------------------------------------------------------------------- hostile bytes (#15)


def test_iter_records_splits_on_newline_only(tmp_path):
    """U+2028, U+2029 and U+0085 are legal raw inside JSON strings: they must not split a record."""
    prompts = ["a\u2028b", "c\u2029d", "e\u0085f", "g\x0bh\x0ci\x1cj"]
    lines = [json.dumps(record(pair_id=f"p{i}", prompt=p), ensure_ascii=False) for i, p in enumerate(prompts)]
    path = write_lines(tmp_path / "r.jsonl", lines)
    records = read_records(path, tolerate_truncated_tail=False)
    assert [r.prompt for r in records] == prompts


def test_iter_manifest_accepts_a_bom_and_fails_a_non_utf8_line_alone(tmp_path):
    good = json.dumps({"pair_id": "g", "prompt": "p", "video_a": "a.mp4", "video_b": "b.mp4"}).encode()
    path = tmp_path / "m.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + good + b"\n" + b'{"pair_id": "x\xff"}\n' + good.replace(b'"g"', b'"h"') + b"\n"
    )
    items = list(iter_manifest(path))
    assert [getattr(i, "pair_id", None) for i in items] == ["g", "<line 2>", "h"]
    bad = items[1]
    assert isinstance(bad, ManifestLineError) and bad.line == 2 and bad.type == "ManifestEncodingError"
    assert "line 2: not UTF-8 (byte 0xff" in bad.message


def test_iter_manifest_keeps_unicode_separators_inside_a_prompt(tmp_path):
    row = {"pair_id": "p", "prompt": "one\u2028two\u0085three", "video_a": "a.mp4", "video_b": "b.mp4"}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    (entry,) = list(iter_manifest(path))
    assert isinstance(entry, ManifestEntry) and entry.prompt == row["prompt"]
