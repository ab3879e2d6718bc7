"""Batch runs: bad pairs fail alone, resume skips finished pairs (truncated tail included), errors retry."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from labeler import jobfiles
from labeler.cache import JudgmentCache
from labeler.engine import Engine, EngineConfig
from labeler.media import video
from labeler.runners.local import run_batch
from labeler.schemas import FatalJudgeError, read_records
from tests.fake_judges import BrightnessJudge, ScriptedFailures, frames_with_level

FPS = 8.0


@pytest.fixture
def manifest(tmp_path):
    clips = tmp_path / "clips"
    a = np.concatenate([frames_with_level(8, 120)] * 2)
    b = np.concatenate([frames_with_level(8, 90), frames_with_level(8, 150)])
    video.write_video(clips / "a.mp4", a, FPS)
    video.write_video(clips / "b.mp4", b, FPS)
    video.write_video(clips / "short.mp4", frames_with_level(10, 120), FPS)
    video.write_video(clips / "fast.mp4", b, 12.0)
    (clips / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 50)
    lines = [
        {"pair_id": f"good{i}", "prompt": f"prompt {i}", "video_a": "clips/a.mp4", "video_b": "clips/b.mp4"}
        for i in range(4)
    ]
    lines += [
        {"pair_id": "short", "prompt": "p", "video_a": "clips/a.mp4", "video_b": "clips/short.mp4"},
        {"pair_id": "fps", "prompt": "p", "video_a": "clips/a.mp4", "video_b": "clips/fast.mp4"},
        {"pair_id": "corrupt", "prompt": "p", "video_a": "clips/a.mp4", "video_b": "clips/corrupt.mp4"},
        {"pair_id": "missing", "prompt": "p", "video_a": "clips/a.mp4", "video_b": "clips/nope.mp4"},
        {"pair_id": "nofields", "prompt": "p"},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{not json\n"
    path = tmp_path / "manifest.jsonl"
    path.write_text(text)
    return path


def label(manifest, out, judge=None, cache=None, **cfg):
    engine = Engine(judge or BrightnessJudge(), EngineConfig(**cfg), cache)
    return asyncio.run(run_batch(manifest, out, engine, workers=3, progress=False)), engine


def test_bad_pairs_fail_alone_with_clear_errors(manifest, tmp_path):
    out = tmp_path / "out.jsonl"
    result, _ = label(manifest, out)
    assert result.ok == 4 and result.failed == 6
    records = read_records(out)
    assert sorted(r.pair_id for r in records) == ["good0", "good1", "good2", "good3"]
    assert all(r.labels == ["A", "B"] for r in records)
    errors = {e.pair_id: e for e in jobfiles.read_errors(jobfiles.errors_path_for(out)).values()}
    assert errors["short"].error.type == "VideoMismatchError" and "10 frames" in errors["short"].error.message
    assert errors["fps"].error.type == "VideoMismatchError" and "fps" in errors["fps"].error.message
    assert (
        errors["corrupt"].error.type == "VideoReadError" and "corrupt.mp4" in errors["corrupt"].error.message
    )
    assert errors["missing"].error.type == "VideoReadError" and "not found" in errors["missing"].error.message
    assert (
        errors["nofields"].error.type == "ManifestValidationError"
        and "video_a" in errors["nofields"].error.message
    )
    bad_json = [e for pid, e in errors.items() if pid.startswith("<line")]
    assert len(bad_json) == 1 and bad_json[0].line == 10 and bad_json[0].error.type == "ManifestJSONError"
    assert all(e.attempts == 1 for e in errors.values())


def test_rerun_retries_only_failures_and_counts_attempts(manifest, tmp_path):
    out = tmp_path / "out.jsonl"
    label(manifest, out)
    judge = BrightnessJudge()
    result, _ = label(manifest, out, judge=judge)
    assert result.skipped == 4 and result.ok == 0 and result.failed == 6
    assert judge.calls == []  # the good pairs were not touched again
    errors = jobfiles.read_errors(jobfiles.errors_path_for(out))
    assert len(errors) == 6 and all(e.attempts == 2 for e in errors.values())
    assert len(jobfiles.errors_path_for(out).read_text().splitlines()) == 6  # compacted, one line per pair


def test_resume_after_truncated_output(manifest, tmp_path):
    out = tmp_path / "out.jsonl"
    cache = tmp_path / "cache"
    label(manifest, out, cache=JudgmentCache(cache))
    full = read_records(out)
    lines = out.read_text().splitlines(keepends=True)
    # as if killed while writing the third record: two whole lines and half of one
    out.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    judge = BrightnessJudge()
    result, engine = label(manifest, out, judge=judge, cache=JudgmentCache(cache))
    assert result.skipped == 2 and result.ok == 2
    assert judge.calls == [] and engine.stats.cache_hits == 8  # resumed pairs came from the cache
    resumed = read_records(out, tolerate_truncated_tail=False)
    key = lambda r: r.pair_id  # noqa: E731
    strip = lambda r: r.model_dump(exclude={"usage"})  # noqa: E731
    assert [strip(r) for r in sorted(resumed, key=key)] == [strip(r) for r in sorted(full, key=key)]


def test_fixed_pairs_leave_the_errors_file(manifest, tmp_path):
    out = tmp_path / "out.jsonl"
    label(manifest, out)
    video.write_video(tmp_path / "clips" / "nope.mp4", np.concatenate([frames_with_level(8, 120)] * 2), FPS)
    result, _ = label(manifest, out)
    assert result.ok == 1 and "missing" in {r.pair_id for r in read_records(out)}
    assert "missing" not in jobfiles.read_errors(jobfiles.errors_path_for(out))


def test_judge_failure_for_one_pair_does_not_stop_the_others(manifest, tmp_path):
    out = tmp_path / "out.jsonl"
    judge = ScriptedFailures([], fail_prompt="prompt 2")
    result, _ = label(manifest, out, judge=judge, max_attempts=2, backoff_initial=0.001, backoff_max=0.002)
    assert result.ok == 3
    assert {r.pair_id for r in read_records(out)} == {"good0", "good1", "good3"}
    errors = jobfiles.read_errors(jobfiles.errors_path_for(out))
    assert errors["good2"].error.type == "TransientJudgeError"


def test_a_judge_that_rejects_everything_stops_the_run(manifest, tmp_path):
    good_only = tmp_path / "good.jsonl"
    good_only.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()[:4]))
    lines = [json.loads(x) for x in good_only.read_text().splitlines()]
    more = [dict(x, pair_id=f"{x['pair_id']}-{k}") for k in range(3) for x in lines]
    good_only.write_text("".join(json.dumps(x) + "\n" for x in more))
    judge = ScriptedFailures([FatalJudgeError("401 invalid api key")] * 1000)
    result, _ = label(good_only, tmp_path / "o.jsonl", judge=judge, concurrency=1)
    assert result.stopped and "401" in result.stopped
    assert result.failed < len(more)


def test_request_budget_stops_cleanly_and_resumes(manifest, tmp_path):
    out = tmp_path / "out.jsonl"
    cache = tmp_path / "cache"
    result, _ = label(manifest, out, cache=JudgmentCache(cache), max_requests=6, concurrency=1)
    assert result.stopped and "budget" in result.stopped
    first_ok = result.ok
    assert first_ok < 4
    judge = BrightnessJudge()
    result, _ = label(manifest, out, judge=judge, cache=JudgmentCache(cache))
    assert result.stopped is None and result.skipped == first_ok
    assert len(read_records(out)) == 4
    assert len(judge.calls) == 4 * 4 - 6  # nothing answered before the stop was asked again


def _record_line(pair_id: str) -> str:
    from tests.test_schemas import record

    return json.dumps(record(pair_id=pair_id), ensure_ascii=False)


def test_prepare_output_rejects_a_corrupt_middle_line(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text(_record_line("a") + "\nnot json\n" + _record_line("b") + "\n")
    with pytest.raises(ValueError, match=":2 is not a dense preference record"):
        jobfiles.prepare_output(out)


def test_prepare_output_keeps_a_whole_last_line_without_newline(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text(_record_line("a") + "\n" + _record_line("b"))
    assert set(jobfiles.prepare_output(out)) == {"a", "b"}
    assert out.read_text().endswith("}\n")


def test_prepare_output_drops_a_cut_off_last_line(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text(_record_line("a") + "\n" + _record_line("b")[:40])
    assert set(jobfiles.prepare_output(out)) == {"a"}


def test_prepare_output_refuses_jsonl_with_pair_ids_that_is_not_an_output(tmp_path):
    """A manifest (or any JSONL keyed by pair_id) must not read as "already done"."""
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps({"pair_id": "a", "prompt": "p", "video_a": "a.mp4", "video_b": "b.mp4"}) + "\n")
    with pytest.raises(ValueError, match=r"o\.jsonl:1 is not a dense preference record"):
        jobfiles.prepare_output(out)


def test_prepare_output_reads_records_holding_unicode_line_separators(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text(_record_line("a\u2028b") + "\n" + _record_line("c\u0085\u2029") + "\n", encoding="utf-8")
    assert set(jobfiles.prepare_output(out)) == {"a\u2028b", "c\u0085\u2029"}


def test_a_duplicate_pair_id_stays_in_the_errors_file_after_its_first_copy_succeeds(manifest, tmp_path):
    lines = manifest.read_text().splitlines()
    dup = tmp_path / "dup.jsonl"
    dup.write_text("\n".join([lines[0], lines[0], lines[1]]) + "\n")
    out = tmp_path / "out.jsonl"
    for attempt in (1, 2):
        label(dup, out)
        errors = jobfiles.read_errors(jobfiles.errors_path_for(out))
        assert errors["good0"].error.type == "DuplicatePairId" and errors["good0"].line == 2
        assert errors["good0"].attempts == attempt
    assert {r.pair_id for r in read_records(out)} == {"good0", "good1"}
    # fixed in the manifest: the stale line error leaves the errors file
    dup.write_text("\n".join([lines[0], lines[1]]) + "\n")
    label(dup, out)
    assert not jobfiles.errors_path_for(out).exists()


class _TooSmallFor(BrightnessJudge):
    """Raises the metrics judge's input error for the given prompts, a judge fault for others."""

    def __init__(self, bad_prompts: set[str], fatal_prompts: set[str] = frozenset()):
        super().__init__()
        self.bad_prompts, self.fatal_prompts = bad_prompts, fatal_prompts

    async def judge(self, request):
        from labeler.schemas import FramesTooSmallError

        if request.prompt in self.bad_prompts:
            raise FramesTooSmallError("metrics judge: frames of 8x8 px are too small to measure")
        if request.prompt in self.fatal_prompts:
            raise FatalJudgeError("401 invalid api key")
        return await super().judge(request)


def _copies(manifest, tmp_path, n):
    first = json.loads(manifest.read_text().splitlines()[0])
    path = tmp_path / "many.jsonl"
    path.write_text(
        "".join(json.dumps(dict(first, pair_id=f"p{k}", prompt=f"prompt {k}")) + "\n" for k in range(n))
    )
    return path


def test_bad_input_never_stops_the_run(manifest, tmp_path):
    """Ten pairs in a row whose frames the judge cannot measure fail alone; the pair after them is labeled."""
    judge = _TooSmallFor({f"prompt {k}" for k in range(10)})
    result, _ = label(_copies(manifest, tmp_path, 11), tmp_path / "o.jsonl", judge=judge, concurrency=1)
    assert result.stopped is None
    assert result.failed == 10 and result.ok == 1
    errors = jobfiles.read_errors(jobfiles.errors_path_for(tmp_path / "o.jsonl"))
    assert {e.error.type for e in errors.values()} == {"FramesTooSmallError"}


def test_bad_input_between_judge_faults_does_not_reset_the_streak(manifest, tmp_path):
    fatal = {f"prompt {k}" for k in range(0, 20, 2)}
    bad = {f"prompt {k}" for k in range(1, 20, 2)}

    async def one_worker():
        engine = Engine(_TooSmallFor(bad, fatal), EngineConfig(concurrency=1))
        return await run_batch(
            _copies(manifest, tmp_path, 20), tmp_path / "o.jsonl", engine, workers=1, progress=False
        )

    result = asyncio.run(one_worker())
    assert result.stopped and "401" in result.stopped
    assert result.failed == 9  # five judge faults and the four bad pairs between them


@pytest.mark.parametrize(
    "second, problem",
    [
        ('{"pair_id": "b", "prompt": "p", "video_a": "a.mp4", "video_b": "b.mp4"}', "missing"),
        ("[1, 2]", "not a JSON object"),
        ("{}", "missing"),
    ],
)
def test_prepare_output_refuses_a_foreign_line_after_a_good_first_line(tmp_path, second, problem):
    out = tmp_path / "o.jsonl"
    out.write_text(_record_line("a") + "\n" + second + "\n" + _record_line("c") + "\n")
    with pytest.raises(ValueError, match=f"o.jsonl:2 is not a dense preference record \\({problem}"):
        jobfiles.prepare_output(out)


def test_prepare_output_refuses_unknown_fields(tmp_path):
    out = tmp_path / "o.jsonl"
    extra = json.dumps({**json.loads(_record_line("b")), "video_path": "x"})
    out.write_text(_record_line("a") + "\n" + extra + "\n")
    with pytest.raises(ValueError, match="unknown fields \\['video_path'\\]"):
        jobfiles.prepare_output(out)
