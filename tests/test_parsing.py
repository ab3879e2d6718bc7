"""labeler.judges.parsing: the tolerant answer parser and label probabilities from OpenAI-format logprobs."""

from __future__ import annotations

import math

import pytest

from labeler.judges.parsing import (
    ANSWER_JSON_SCHEMA,
    JudgeAnswer,
    label_probabilities_from_logprobs,
    normalize_label,
    parse_answer,
)
from labeler.schemas import JudgeParseError


@pytest.mark.parametrize(
    ("text", "label", "rationale"),
    [
        ('{"rationale": "B smears the hand", "label": "A"}', "A", "B smears the hand"),
        ('```json\n{"rationale": "same", "label": "tie"}\n```', "tie", "same"),
        ('Here is my answer:\n```\n{"rationale": "r", "label": "B"}\n```\nThanks!', "B", "r"),
        ('Sure. {"rationale": "A flickers", "label": "second"} Hope this helps.', "B", "A flickers"),
        ('{"rationale": "x", "label": "Video A"}', "A", "x"),
        ('{"rationale": "x", "label": "1"}', "A", "x"),
        ('{"rationale": "x", "label": 2}', "B", "x"),
        ('{"rationale": "x", "label": "Equal"}', "tie", "x"),
        ('{"rationale": "x", "label": "same"}', "tie", "x"),
        ('{"reasoning": "both fine", "answer": "neither"}', "tie", "both fine"),
        ('{"label": "first"}', "A", ""),
        ('{"Rationale": "caps", "LABEL": " b "}', "B", "caps"),
        # The last JSON object is the model's final word.
        (
            '{"rationale": "draft", "label": "A"} on reflection {"rationale": "final", "label": "B"}',
            "B",
            "final",
        ),
        ("Label: second video", "B", "Label: second video"),
        ("After looking closely.\nAnswer: tie", "tie", "After looking closely.\nAnswer: tie"),
    ],
)
def test_parse_answer_tolerates_common_shapes(text, label, rationale):
    answer = parse_answer(text)
    assert isinstance(answer, JudgeAnswer)
    assert (answer.label, answer.rationale) == (label, rationale)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        (None, "empty"),
        ("I think both are nice.", "no JSON object was found"),
        ('{"rationale": "x", "label": "maybe"}', '"label" is "maybe"'),
        ('{"rationale": "x"}', 'no "label" field'),
        ('{"rationale": "x", "label": null}', '"label" is null'),
        ('{"rationale": "x", "label": "A"', "no JSON object was found"),  # cut off mid-object
    ],
)
def test_parse_answer_failures_explain_the_problem_and_the_format(text, message):
    with pytest.raises(JudgeParseError) as info:
        parse_answer(text)
    assert message in str(info.value)
    assert '"label": "A" | "B" | "tie"' in str(info.value)  # usable verbatim in a re-ask


def test_normalize_label_synonyms_and_rejections():
    assert [normalize_label(x) for x in ("A", " first ", "Video 2", "the second video", "Tie.", "left")] == [
        "A", "A", "B", "B", "tie", "A",
    ]  # fmt: skip
    assert normalize_label(True) is None and normalize_label(None) is None and normalize_label("C") is None


def test_answer_schema_is_strict_mode_compatible():
    schema = ANSWER_JSON_SCHEMA
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["required"]) == set(schema["properties"]) == {"rationale", "label"}
    assert list(schema["properties"]) == ["rationale", "label"]  # rationale first: reason, then answer
    assert schema["properties"]["label"]["enum"] == ["A", "B", "tie"]


# --------------------------------------------------------------------------- logprobs


def _tok(token: str, alternatives: dict[str, float] | None = None, p: float = 0.99) -> dict:
    alts = alternatives or {token: p}
    return {
        "token": token,
        "logprob": math.log(alts.get(token, p)),
        "top_logprobs": [{"token": t, "logprob": math.log(q)} for t, q in alts.items()],
    }


def _prefix(*tail: str) -> list[dict]:
    return [_tok(t) for t in ('{"', "rationale", '":', ' "', "B", " blurs", '",', ' "', "label", '":', *tail)]


def test_label_token_with_its_own_alternatives():
    tokens = [*_prefix(' "'), _tok("A", {"A": 0.6, "tie": 0.3, "B": 0.1}), _tok('"}')]
    probs = label_probabilities_from_logprobs(tokens)
    assert probs == pytest.approx({"A": 0.6, "B": 0.1, "tie": 0.3})


def test_quote_and_space_inside_the_label_token():
    tokens = [*_prefix(), _tok(' "B', {' "B': 0.5, ' "A': 0.25, ' "tie': 0.125, ' "The': 0.125}), _tok('"}')]
    probs = label_probabilities_from_logprobs(tokens)
    # ' "The' is not a label: it is dropped and the rest renormalised.
    assert probs == pytest.approx({"A": 0.25 / 0.875, "B": 0.5 / 0.875, "tie": 0.125 / 0.875})
    assert sum(probs.values()) == pytest.approx(1.0)


def test_quote_without_space_and_closing_quote_in_the_same_token():
    # ... "label":"A"} — the value starts right after the '"' that shares the token with it.
    tokens = [*_prefix(), _tok('"A"}', {'"A"}': 0.8, '"B"}': 0.2})]
    probs = label_probabilities_from_logprobs(tokens)
    assert probs == pytest.approx({"A": 0.8, "B": 0.2, "tie": 0.0})


def test_tie_split_into_t_and_ie_counts_as_tie():
    tokens = [*_prefix(' "'), _tok("T", {"T": 0.7, "A": 0.2, "B": 0.1}), _tok("ie"), _tok('"}')]
    assert label_probabilities_from_logprobs(tokens) == pytest.approx({"A": 0.2, "B": 0.1, "tie": 0.7})


def test_chosen_token_counts_even_when_missing_from_top_logprobs():
    label = {
        "token": "B",
        "logprob": math.log(0.5),
        "top_logprobs": [{"token": "A", "logprob": math.log(0.3)}],
    }
    probs = label_probabilities_from_logprobs([*_prefix(' "'), label, _tok('"}')])
    assert probs == pytest.approx({"A": 0.3 / 0.8, "B": 0.5 / 0.8, "tie": 0.0})


def test_no_label_value_or_no_label_alternatives_gives_none():
    assert label_probabilities_from_logprobs(None) is None
    assert label_probabilities_from_logprobs([]) is None
    assert label_probabilities_from_logprobs([_tok("I"), _tok(" think")]) is None
    only_junk = [*_prefix(' "'), _tok("maybe", {"maybe": 0.9, "perhaps": 0.1}), _tok('"}')]
    assert label_probabilities_from_logprobs(only_junk) is None


def test_label_key_inside_the_rationale_text_is_not_mistaken_for_the_value():
    # An escaped quote in the rationale (\"label\": \"B\") is not the real key; the last real one is.
    tokens = [
        _tok('{"rationale": "it says \\"label\\": \\"B'),
        _tok('\\" in the corner", "label": "'),
        _tok("A", {"A": 0.9, "B": 0.1}),
        _tok('"}'),
    ]
    assert label_probabilities_from_logprobs(tokens) == pytest.approx({"A": 0.9, "B": 0.1, "tie": 0.0})
