"""The in-process transformers judge, end to end on a tiny random LLaVA built in code (tests/hf_tiny.py)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from labeler.judges import build_judge
from labeler.judges.base import Judge
from labeler.judges.hf_helpers import LABEL_PREFIX, json_string_body, resolve_label_tokens
from labeler.judges.hf_local import HFJudge
from labeler.judges.parsing import parse_answer
from labeler.judges.prompts import load_prompt
from labeler.schemas import FatalJudgeError, JudgeError, Judgment, SegmentRequest
from tests.conftest import textured_frames
from tests.hf_tiny import BOS, CHAT_TEMPLATE, build_tiny_tokenizer, build_tiny_vlm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny") / "llava")


@pytest.fixture(scope="module")
def judge(tiny_dir: Path) -> HFJudge:
    j = HFJudge(str(tiny_dir))
    j.load()
    return j


def make_request(
    seed_first: int = 1, seed_second: int = 2, k: int = 4, prompt: str = "a dog runs"
) -> SegmentRequest:
    return SegmentRequest(
        prompt=prompt,
        frames_first=textured_frames(k, seed=seed_first),
        frames_second=textured_frames(k, seed=seed_second),
        start_s=0.0,
        end_s=1.0,
        frame_times=tuple(0.125 + 0.25 * i for i in range(k)),
    )


def swapped(req: SegmentRequest) -> SegmentRequest:
    return SegmentRequest(
        prompt=req.prompt,
        frames_first=req.frames_second,
        frames_second=req.frames_first,
        start_s=req.start_s,
        end_s=req.end_s,
        frame_times=req.frame_times,
    )


def probs(j: Judgment) -> tuple[float, float, float]:
    return (j.p_a, j.p_b, j.p_tie)


# --------------------------------------------------------------------------- end to end


def test_judgment_is_valid_and_label_is_argmax(judge: HFJudge) -> None:
    result = asyncio.run(judge.judge(make_request()))
    assert isinstance(judge, Judge)
    assert result.prob_source == "logits"
    assert sum(probs(result)) == pytest.approx(1.0, abs=1e-9)
    assert all(0.0 < p < 1.0 for p in probs(result))
    assert result.label == ("A", "B", "tie")[int(np.argmax(probs(result)))]
    assert result.model == judge.model
    assert parse_answer(result.raw).label == result.label
    # 8 images of 16 tokens each are part of the prompt; one label token is "generated".
    assert result.input_tokens > 8 * 16
    assert result.output_tokens == 1


def test_probabilities_are_the_softmax_of_the_label_logits(judge: HFJudge, tiny_dir: Path) -> None:
    """Recompute by hand with plain transformers: the judge reads the right position and tokens."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    request = make_request(3, 4)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()
    messages, images = [], []
    for message in load_prompt("conservative").render(request):
        parts = []
        for part in message["content"]:
            if part["type"] == "image":
                images.append(Image.fromarray(part["image"]))
                parts.append({"type": "image"})
            else:
                parts.append(part)
        messages.append({"role": message["role"], "content": parts})
    text = processor.apply_chat_template(messages, add_generation_prompt=True) + LABEL_PREFIX
    inputs = processor(text=[text], images=images, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        logits = model(**inputs).logits[0, -1]
    ids = processor.tokenizer.convert_tokens_to_ids(["A", "B", "tie"])
    expected = torch.softmax(logits[ids].double(), dim=0).tolist()

    result = asyncio.run(judge.judge(request))
    assert probs(result) == pytest.approx(expected, abs=1e-5)
    assert result.input_tokens == inputs["input_ids"].shape[1]


def test_deterministic_across_calls_and_loads(judge: HFJudge, tiny_dir: Path) -> None:
    request = make_request()
    first = asyncio.run(judge.judge(request))
    again = asyncio.run(judge.judge(request))
    fresh = asyncio.run(HFJudge(str(tiny_dir)).judge(request))
    assert first == again
    assert probs(fresh) == pytest.approx(probs(first), abs=1e-9)


def test_swapping_the_videos_changes_the_answer(judge: HFJudge) -> None:
    request = make_request(5, 6)
    ab = asyncio.run(judge.judge(request))
    ba = asyncio.run(judge.judge(swapped(request)))
    assert probs(ab) != pytest.approx(probs(ba), abs=1e-6)


def test_model_sees_one_bos_and_all_images(judge: HFJudge, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[int], int]] = []
    original = judge._inputs

    def spy(text, images, videos):
        inputs = original(text, images, videos)
        seen.append((inputs["input_ids"][0].tolist(), len(images)))
        return inputs

    monkeypatch.setattr(judge, "_inputs", spy)
    asyncio.run(judge.judge(make_request(k=3)))
    ids, n_images = seen[-1]
    bos = judge._processor.tokenizer.convert_tokens_to_ids(BOS)
    assert ids[0] == bos and ids.count(bos) == 1  # the template's BOS, not a second one from the tokenizer
    assert n_images == 6


@pytest.mark.parametrize("layout, n_images", [("separate", 8), ("side-by-side", 4)])
def test_both_layouts(tiny_dir: Path, layout: str, n_images: int, monkeypatch: pytest.MonkeyPatch) -> None:
    j = HFJudge(str(tiny_dir), layout=layout)
    j.load()
    counts: list[int] = []
    original = j._inputs
    monkeypatch.setattr(
        j,
        "_inputs",
        lambda text, images, videos: (counts.append(len(images)), original(text, images, videos))[1],
    )
    result = asyncio.run(j.judge(make_request(k=4)))
    assert counts == [n_images]
    assert sum(probs(result)) == pytest.approx(1.0)
    assert result.input_tokens > n_images * 16


def test_concurrent_calls_match_sequential_and_never_overlap(
    judge: HFJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [make_request(s, s + 20, k=2) for s in range(4)]
    sequential = [asyncio.run(judge.judge(r)) for r in requests]

    active, peak = 0, 0
    counter = threading.Lock()
    net = judge._net
    original_forward = net.forward

    def forward(*args, **kwargs):
        nonlocal active, peak
        with counter:
            active += 1
            peak = max(peak, active)
        time.sleep(0.02)  # widen the window in which an unserialised second call would overlap
        try:
            return original_forward(*args, **kwargs)
        finally:
            with counter:
                active -= 1

    monkeypatch.setattr(net, "forward", forward)

    async def all_at_once() -> list[Judgment]:
        return await asyncio.gather(*(judge.judge(r) for r in requests))

    concurrent = asyncio.run(all_at_once())
    assert concurrent == sequential
    assert peak == 1


def test_rationale_is_generated_before_the_label(tiny_dir: Path) -> None:
    j = HFJudge(str(tiny_dir), rationale_tokens=6)
    result = asyncio.run(j.judge(make_request()))
    assert 1 < result.output_tokens <= 6 + 1
    assert result.input_tokens > 8 * 16
    assert sum(probs(result)) == pytest.approx(1.0)
    answer = parse_answer(result.raw)
    assert answer.label == result.label and answer.rationale == result.rationale
    assert asyncio.run(j.judge(make_request())) == result


def test_max_side_shrinks_the_images(tiny_dir: Path, judge: HFJudge) -> None:
    small = HFJudge(str(tiny_dir), max_side=12)
    request = make_request()
    assert probs(asyncio.run(small.judge(request))) != pytest.approx(probs(asyncio.run(judge.judge(request))))


# --------------------------------------------------------------------------- label tokens


def test_label_tokens_are_the_single_letter_tokens() -> None:
    tok = build_tiny_tokenizer()
    text = 'system text<|im_start|>assistant\n{"label": "'
    resolved = resolve_label_tokens(tok, text)
    assert resolved.text == text
    assert list(resolved.ids) == tok.convert_tokens_to_ids(["A", "B", "tie"])


def test_label_tokens_that_swallow_the_quote_are_scored_one_character_earlier() -> None:
    tok = build_tiny_tokenizer(quote_merges=True)
    text = 'x{"label": "'
    assert tok.tokenize(text + "A")[-1] == '"A'  # the quote and the label merge into one token
    resolved = resolve_label_tokens(tok, text)
    assert resolved.text == text[:-1]
    assert list(resolved.ids) == tok.convert_tokens_to_ids(['"A', '"B', '"tie'])


def test_indistinguishable_labels_are_a_fatal_error() -> None:
    def upper_blind(text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [0 if c.isupper() else ord(c) for c in text]}  # "A" and "B" look alike

    with pytest.raises(FatalJudgeError, match="distinct"):
        resolve_label_tokens(upper_blind, '{"label": "')


def test_judge_with_quote_merging_tokenizer_end_to_end(tmp_path: Path) -> None:
    j = HFJudge(str(build_tiny_vlm(tmp_path / "quoted", quote_merges=True)))
    result = asyncio.run(j.judge(make_request(k=2)))
    assert sum(probs(result)) == pytest.approx(1.0)
    assert result.label == ("A", "B", "tie")[int(np.argmax(probs(result)))]


def test_template_without_system_role_gets_the_system_text_in_the_user_turn(tmp_path: Path) -> None:

    no_system = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + CHAT_TEMPLATE
    )
    j = HFJudge(str(build_tiny_vlm(tmp_path / "nosys", chat_template=no_system)))
    j.load()
    messages, _, _ = j._chat(make_request(k=2))
    rendered = j._template(messages)
    assert "<|im_start|>system" not in rendered
    assert "meticulous video quality rater" in rendered  # the conservative prompt's system text
    assert sum(probs(asyncio.run(j.judge(make_request(k=2))))) == pytest.approx(1.0)


# --------------------------------------------------------------------------- identity and errors


def test_fingerprint_follows_prompt_layout_and_settings(tiny_dir: Path) -> None:
    base = HFJudge(str(tiny_dir)).fingerprint()
    assert base == HFJudge(str(tiny_dir)).fingerprint()
    assert base["prompt_id"] == load_prompt("conservative").prompt_id
    for options in (
        {"prompt": "artifacts_motion_text"},
        {"layout": "side-by-side"},
        {"rationale_tokens": 4},
        {"dtype": "bfloat16"},
        {"max_side": 64},
    ):
        assert HFJudge(str(tiny_dir), **options).fingerprint() != base, options


def test_fingerprint_follows_the_weights(tmp_path: Path) -> None:
    one = build_tiny_vlm(tmp_path / "one", seed=0)
    copy = tmp_path / "copy"
    shutil.copytree(one, copy)
    other = build_tiny_vlm(tmp_path / "other", seed=1)
    weights = lambda p: HFJudge(str(p)).fingerprint()["weights"]  # noqa: E731
    assert weights(one) == weights(copy)  # same files, same identity: the cache survives a copy
    assert weights(one) != weights(other)
    build_tiny_vlm(copy, seed=1)  # rewritten in place with other weights
    assert weights(copy) != weights(one)


def test_hub_id_not_in_the_cache_is_identified_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # so "org/name" cannot be a relative folder
    fp = HFJudge("nobody-densepref/no-such-model").fingerprint()
    assert fp["model"] == "nobody-densepref/no-such-model" and fp["weights"] is None


def test_missing_model_path_is_fatal_and_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(FatalJudgeError, match="nowhere"):
        HFJudge(str(missing))
    with pytest.raises(FatalJudgeError, match="nowhere"):
        build_judge("hf", model=str(missing))


def test_folder_without_a_model_fails_load_and_ready(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    j = HFJudge(str(empty))
    assert asyncio.run(j.ready()) is False
    with pytest.raises(FatalJudgeError, match="empty"):
        asyncio.run(j.judge(make_request(k=2)))


def test_missing_transformers_says_how_to_install(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(FatalJudgeError, match=r"pip install -e '\.\[hf\]'"):
        HFJudge(str(tiny_dir)).load()


def test_ready_loads_and_aclose_frees(tiny_dir: Path) -> None:
    j = HFJudge(str(tiny_dir))
    assert not j.loaded

    async def scenario() -> tuple[bool, bool, Judgment]:
        ok = await j.ready()
        loaded = j.loaded
        await j.aclose()
        return ok, loaded, await j.judge(make_request(k=2))  # loads again on demand

    ok, loaded_after_ready, result = asyncio.run(scenario())
    assert ok and loaded_after_ready
    assert result.prob_source == "logits"


def test_bad_options_are_rejected(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        HFJudge(str(tiny_dir), layout="grid")
    with pytest.raises(ValueError, match="dtype"):
        HFJudge(str(tiny_dir), dtype="int3")
    with pytest.raises(ValueError, match="rationale_tokens"):
        HFJudge(str(tiny_dir), rationale_tokens=-1)


def test_prompt_not_ending_at_the_answer_is_refused(judge: HFJudge, monkeypatch: pytest.MonkeyPatch) -> None:
    """A processor that appends a token (say EOS) would shift the scored position: refuse it."""
    import torch

    original = judge._inputs

    def with_eos(text, images, videos):
        inputs = original(text, images, videos)
        eos = torch.tensor([[judge._processor.tokenizer.eos_token_id]])
        inputs["input_ids"] = torch.cat([inputs["input_ids"], eos], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        return inputs

    monkeypatch.setattr(judge, "_inputs", with_eos)
    with pytest.raises(FatalJudgeError, match="does not end the prompt"):
        asyncio.run(judge.judge(make_request(k=2)))


def test_a_failing_forward_fails_the_request_not_the_judge(
    judge: HFJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(judge._net, "forward", out_of_memory)
    with pytest.raises(JudgeError, match="out of memory") as info:
        asyncio.run(judge.judge(make_request(k=2)))
    assert not isinstance(info.value, FatalJudgeError)
    monkeypatch.undo()
    assert asyncio.run(judge.judge(make_request(k=2))).prob_source == "logits"


def test_auto_device_is_fingerprinted_as_the_device_it_picks(tiny_dir: Path) -> None:
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert HFJudge(str(tiny_dir), device="auto").fingerprint()["device"] == expected


def test_engine_labels_a_pair_with_the_hf_judge(tiny_dir: Path, make_video, tmp_path: Path) -> None:
    """The whole path: videos -> engine (both orders, cache) -> hf judge -> dense record."""
    from labeler.cache import JudgmentCache
    from labeler.engine import Engine, EngineConfig
    from labeler.schemas import ManifestEntry

    entry = ManifestEntry(
        pair_id="p1",
        prompt="a textured wall",
        video_a=str(make_video("a.mp4", n_frames=16, fps=8.0, seed=1)),
        video_b=str(make_video("b.mp4", n_frames=16, fps=8.0, seed=2)),
    )
    config = EngineConfig(frames_per_segment=2, max_side=64)
    cache = JudgmentCache(tmp_path / "cache")
    record = asyncio.run(Engine(HFJudge(str(tiny_dir)), config, cache).label_pair(entry))
    assert len(record.segments) == 2
    assert record.labeler.judge == "hf" and record.labeler.prompt_id == load_prompt("conservative").prompt_id
    for seg in record.segments:
        assert [v.order for v in seg.votes] == ["ab", "ba"]
        assert seg.p_a + seg.p_b + seg.p_tie == pytest.approx(1.0, abs=1e-6)
    assert record.usage.requests == 4 and record.usage.input_tokens > 0

    again = asyncio.run(Engine(HFJudge(str(tiny_dir)), config, cache).label_pair(entry))
    assert again.usage.cache_hits == 4 and again.usage.requests == 0
    assert again.segments == record.segments


@pytest.mark.parametrize(
    "generated, body",
    [
        ('smeared hand", "label', "smeared hand"),  # closed by the model
        ('a \\"quoted\\" word"', 'a \\"quoted\\" word'),  # escaped quotes stay inside
        ("cut off by the token limi", "cut off by the token limi"),
        ("ends mid-escape \\", "ends mid-escape "),  # a dangling backslash would escape the closing quote
    ],
)
def test_rationale_string_body(generated: str, body: str) -> None:
    assert json_string_body(generated) == body


def test_answer_order_is_declared_and_recorded(tiny_dir: Path) -> None:
    # The label's logits are read after the rationale when one is written first: p_* then mean
    # something else, so the order goes into every record's labeler block.
    from labeler.engine import Engine, EngineConfig, FrameSegment

    for tokens, order in ((0, "label-first"), (6, "rationale-first")):
        judge = HFJudge(str(tiny_dir), rationale_tokens=tokens)
        assert judge.answer_order == order
        segment = FrameSegment(textured_frames(2, seed=1), textured_frames(2, seed=2), 0.0, 1.0)
        engine = Engine(judge, EngineConfig(swap=False, frames_per_segment=2))
        record = asyncio.run(engine.label_frames("a dog runs", [segment]))
        assert record.labeler.answer_order == order
