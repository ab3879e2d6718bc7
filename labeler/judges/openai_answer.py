"""Reading one chat.completion answer of the ``openai`` judge into a Judgment (online answers and
Batch API output lines alike)."""

from __future__ import annotations

from typing import Any

from labeler.judges.parsing import label_probabilities_or_vote, parse_answer
from labeler.judges.usage import read_usage
from labeler.schemas import JudgeParseError, Judgment

__all__ = ["VLLM_WHITESPACE_FIX", "is_whitespace_loop", "read_completion"]

#: The ``vllm serve`` flag that stops a JSON grammar from letting the model emit whitespace until
#: the token limit (xgrammar issue 212; vLLM reads it from the server's StructuredOutputsConfig
#: only, and refuses it without an explicit xgrammar or guidance backend).
VLLM_WHITESPACE_FIX = '{"backend": "xgrammar", "disable_any_whitespace": true}'


def is_whitespace_loop(raw: str, finish_reason: Any) -> bool:
    """An answer cut at the token limit that is whitespace, give or take the JSON's opening brace:
    the grammar allowed whitespace and the model never left it."""
    return finish_reason == "length" and len(raw) > 0 and len(raw.strip().strip('{["')) == 0


def read_completion(
    response: dict[str, Any], model: str
) -> tuple[Judgment | None, str, JudgeParseError | None]:
    """(judgment or None, raw text, parse error or None) of one chat.completion JSON."""
    usage = response.get("usage") or {}
    counts = read_usage(response.get("usage"))  # ImpossibleUsage (a ValueError) if unreal
    in_tok, out_tok = counts.prompt_tokens, counts.completion_tokens
    choices = response.get("choices") or []
    if not choices:
        return None, "", JudgeParseError("The response held no choices. Reply with the JSON object.")
    choice = choices[0]
    message = choice.get("message") or {}
    raw = message.get("content") or ""
    if message.get("refusal"):
        return None, raw, JudgeParseError(f"The model refused: {message['refusal']}")
    try:
        answer = parse_answer(raw)
    except JudgeParseError as parse_error:
        error = parse_error
        if is_whitespace_loop(raw, choice.get("finish_reason")):
            error = JudgeParseError(
                f"the answer was {len(raw)} characters of whitespace up to the token limit: the "
                "server's JSON grammar lets the model loop on whitespace (vLLM with Qwen models). "
                f"Start vllm serve with --structured-outputs-config '{VLLM_WHITESPACE_FIX}'"
            )
        elif choice.get("finish_reason") == "length":
            details = usage.get("completion_tokens_details") or {}
            hint = "keep the rationale short"
            if details.get("reasoning_tokens"):
                hint = (
                    f"{details['reasoning_tokens']} tokens went to hidden reasoning: give the model "
                    "room with --reasoning-effort (lower) or a larger reasoning budget"
                )
            error = JudgeParseError(f"{parse_error} (the answer was cut off at the token limit: {hint})")
        return None, raw, error
    probs, source = label_probabilities_or_vote((choice.get("logprobs") or {}).get("content"), answer.label)
    judgment = Judgment(
        label=answer.label,
        p_a=probs["A"],
        p_b=probs["B"],
        p_tie=probs["tie"],
        rationale=answer.rationale,
        raw=raw,
        input_tokens=in_tok,
        output_tokens=out_tok,
        cached_input_tokens=counts.cached_tokens,
        model=response.get("model") or model,
        prob_source=source,
    )
    return judgment, raw, None
