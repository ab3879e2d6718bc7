"""Reading a judge's answer: the JSON format, a tolerant parser, and label probabilities from logprobs.

The answer is a JSON object with a ``label`` ("A" | "B" | "tie") and a ``rationale``, in the order
the judge asks for (``answer_json_schema``): "label-first" makes the label's logprob the model's own
belief about the frames, "rationale-first" lets it reason before committing, but then the label's
probability mostly measures agreement with the rationale it has just written (docs/endpoints.md).
"A" is always the video shown first.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from labeler.schemas import JudgeParseError

Label = Literal["A", "B", "tie"]

__all__ = [
    "ANSWER_JSON_SCHEMA",
    "JudgeAnswer",
    "answer_json_schema",
    "label_probabilities_from_logprobs",
    "normalize_label",
    "parse_answer",
]


class JudgeAnswer(BaseModel):
    """One parsed answer, in presentation order (A = first shown, B = second shown)."""

    model_config = ConfigDict(extra="ignore")

    rationale: str
    label: Literal["A", "B", "tie"]


#: For ``response_format={"type": "json_schema", ...}``. Strict-mode compatible (OpenAI structured
#: outputs): every property required, no additional properties, no unsupported keywords.
ANSWER_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "rationale": {"type": "string", "description": "One or two sentences naming the decisive artifacts."},
        "label": {"type": "string", "enum": ["A", "B", "tie"]},
    },
    "required": ["rationale", "label"],
    "additionalProperties": False,
}


def answer_json_schema(order: str = "label-first") -> dict[str, Any]:
    """The answer schema with its properties in ``order`` ("label-first" | "rationale-first").
    Structured outputs (OpenAI's, vLLM's xgrammar/guidance) generate properties in schema order."""
    if order == "rationale-first":
        return ANSWER_JSON_SCHEMA
    if order != "label-first":
        raise ValueError(f"answer order must be 'label-first' or 'rationale-first', got {order!r}")
    props = ANSWER_JSON_SCHEMA["properties"]
    return {
        **ANSWER_JSON_SCHEMA,
        "properties": {"label": props["label"], "rationale": props["rationale"]},
        "required": ["label", "rationale"],
    }


# Lower-cased, whitespace-collapsed spellings models use for each label.
_SYNONYMS: dict[str, Label] = {}
_WORDS: dict[Label, list[str]] = {
    "A": [
        "a",
        "first",
        "1",
        "one",
        "video a",
        "video 1",
        "first video",
        "the first video",
        "left",
        "option a",
    ],
    "B": [
        "b",
        "second",
        "2",
        "two",
        "video b",
        "video 2",
        "second video",
        "the second video",
        "right",
        "option b",
    ],
    "tie": [
        "tie",
        "equal",
        "same",
        "draw",
        "neither",
        "none",
        "both",
        "no preference",
        "equally good",
        "about the same",
        "similar",
        "tied",
    ],
}
for _label, _words in _WORDS.items():
    for _w in _words:
        _SYNONYMS[_w] = _label

_LABEL_KEYS = ("label", "answer", "verdict", "winner", "preference", "choice", "better")
_RATIONALE_KEYS = ("rationale", "reasoning", "reason", "explanation", "justification", "analysis")
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
# A bare "label: A" / "Answer - second video" line when the model ignored the JSON instruction.
_LOOSE_LABEL = re.compile(
    r"\b(?:label|answer|verdict|winner|preference)\b\s*[:=\-]\s*\**\s*[\"']?([A-Za-z0-9 ]{1,20}?)[\"'.*]*\s*$",
    re.IGNORECASE | re.MULTILINE,
)

FORMAT_HINT = (
    'Reply with exactly one JSON object: {"rationale": "<one or two sentences>", "label": "A" | "B" | "tie"}.'
)


def normalize_label(value: Any) -> Label | None:
    """Map a label spelling ("A", " first ", "Video 2", "equal", 1...) to "A"/"B"/"tie", or None."""
    if isinstance(value, bool) or value is None:
        return None
    text = " ".join(str(value).strip().strip("\"'.*`").lower().split())
    return _SYNONYMS.get(text)


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object found in ``text``: fenced blocks first, then any ``{...}`` inside prose."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    for chunk in candidates:
        pos = chunk.find("{")
        while pos != -1:
            try:
                obj, end = decoder.raw_decode(chunk, pos)
            except json.JSONDecodeError:
                pos = chunk.find("{", pos + 1)
                continue
            if isinstance(obj, dict):
                found.append(obj)
            pos = chunk.find("{", end)
    return found


def _pick(obj: dict[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    lowered = {str(k).strip().lower(): (k, v) for k, v in obj.items()}
    for key in keys:
        if key in lowered:
            return lowered[key]
    return None, None


def parse_answer(text: str | None) -> JudgeAnswer:
    """Parse a judge answer, tolerating code fences, prose around the JSON, other key names for the
    label/rationale and label synonyms. Raises JudgeParseError with a message fit for a re-ask."""
    if text is None or not text.strip():
        raise JudgeParseError(f"The answer was empty. {FORMAT_HINT}")
    objects = _json_objects(text)
    problems: list[str] = []
    for obj in reversed(objects):  # the last object is the model's final word
        key, raw_label = _pick(obj, _LABEL_KEYS)
        if key is None:
            problems.append(
                f'the JSON object has no "label" field (keys: {", ".join(map(str, obj)) or "none"})'
            )
            continue
        label = normalize_label(raw_label)
        if label is None:
            problems.append(f'"label" is {json.dumps(raw_label)[:40]}, which is not one of "A", "B", "tie"')
            continue
        _, rationale = _pick(obj, _RATIONALE_KEYS)
        try:
            return JudgeAnswer(rationale="" if rationale is None else str(rationale), label=label)
        except ValidationError as exc:  # pragma: no cover - label is already normalised
            problems.append(str(exc))
    if not objects:
        loose = _LOOSE_LABEL.findall(text)
        label = normalize_label(loose[-1]) if loose else None
        if label is not None:
            return JudgeAnswer(rationale=text.strip()[:2000], label=label)
        problems.append("no JSON object was found in the answer")
    snippet = " ".join(text.split())[:120]
    raise JudgeParseError(
        f"Could not read the answer ({'; '.join(problems)}). Answer began: {snippet!r}. {FORMAT_HINT}"
    )


# --------------------------------------------------------------------------- logprobs

_VALUE_START = re.compile(r'"label"\s*:\s*"')
_STRIP = " \t\n\"'},.`"


def _label_of_fragment(fragment: str) -> str | None:
    """Which label a token (the part after the opening quote) begins: "A", "B" or "tie". Partial
    tokens count when they can only start one label ("t", "ti" -> tie), so a 'T' + 'ie' split works."""
    core = fragment.strip(_STRIP)
    if not core:
        return None
    if core in ("A", "B"):
        return core
    if "tie".startswith(core.lower()):
        return "tie"
    return None


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def label_probabilities_from_logprobs(tokens: list[dict[str, Any]] | None) -> dict[str, float] | None:
    """Label distribution at the token where the ``"label"`` value starts.

    ``tokens`` is OpenAI's ``choices[0].logprobs.content``. The token holding the first character
    of the value is found by offsets in the concatenated text (so '"A', ' "A' and a separate '"'
    token all work); its ``top_logprobs`` alternatives are read as the same prefix followed by a
    label. Returns normalised {"A", "B", "tie"} probabilities, or None when the value or any
    label alternative is absent (e.g. logprobs were not returned).
    """
    if not tokens:
        return None
    texts = [str(_get(t, "token") or "") for t in tokens]
    joined = "".join(texts)
    matches = list(_VALUE_START.finditer(joined))
    if not matches:
        return None
    value_start = matches[-1].end()
    offset = 0
    for tok, text in zip(tokens, texts, strict=True):
        end = offset + len(text)
        if offset <= value_start < end:
            prefix = text[: value_start - offset]  # e.g. ' "' when the quote shares the token
            return _distribution(tok, text, prefix)
        offset = end
    return None


def label_probabilities_or_vote(
    tokens: list[dict[str, Any]] | None, label: str
) -> tuple[dict[str, float], Literal["logprobs", "vote"]]:
    """The logprob distribution at the label (``label_probabilities_from_logprobs``), or, where the
    answer carries none, a one-hot vote for ``label``; with the source, which records report."""
    probs = label_probabilities_from_logprobs(tokens)
    if probs is None:
        return {k: float(k == label) for k in ("A", "B", "tie")}, "vote"
    return probs, "logprobs"


def _distribution(token: Any, text: str, prefix: str) -> dict[str, float] | None:
    alternatives = list(_get(token, "top_logprobs") or [])
    seen: set[str] = set()
    mass = {"A": 0.0, "B": 0.0, "tie": 0.0}
    chosen = {"token": text, "logprob": _get(token, "logprob")}
    for alt in [*alternatives, chosen]:
        alt_text = str(_get(alt, "token") or "")
        logprob = _get(alt, "logprob")
        if alt_text in seen or logprob is None:
            continue
        seen.add(alt_text)
        if prefix and not alt_text.lstrip().startswith(prefix.lstrip()):
            continue
        label = _label_of_fragment(alt_text.lstrip()[len(prefix.lstrip()) :] if prefix else alt_text)
        if label is not None and math.isfinite(float(logprob)):
            mass[label] += math.exp(float(logprob))
    total = sum(mass.values())
    if total <= 0.0:
        return None
    return {k: v / total for k, v in mass.items()}
