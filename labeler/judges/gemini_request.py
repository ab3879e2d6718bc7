"""Building a ``gemini`` judge request and reading its answer, with Google's own SDK types
(``google.genai.types``): the judge module only sends and retries.

Each video of a segment (A, B and, with ``--show-reference``, the reference) goes as one inline
``video/mp4`` part: the segment's sampled frames encoded at their sampling rate, with
``videoMetadata.fps`` set to that rate, so Gemini (which samples 1 frame a second by default) sees
every frame. The answer is JSON constrained by ``response_schema``; with ``response_logprobs`` the
label's probabilities come from the top candidates at the label token, else the answer is a vote.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labeler.judges.parsing import label_probabilities_or_vote, parse_answer
from labeler.schemas import JudgeParseError, Judgment

__all__ = [
    "GEMINI_PRICES",
    "MAX_INLINE_BYTES",
    "MAX_VIDEO_FPS",
    "TOKENS_PER_FRAME",
    "gemini_price",
    "logprob_tokens",
    "read_response",
    "segment_mp4",
    "video_fps",
]

#: Gemini's ``videoMetadata.fps`` must lie in (0, 24].
MAX_VIDEO_FPS = 24.0
#: Gemini refuses a request whose inline data passes 20 MB (larger videos go through its Files API).
MAX_INLINE_BYTES = 20 * 1024 * 1024
#: Tokens Gemini bills per sampled video frame at the default media resolution (Gemini API docs,
#: "Video understanding": 258 tokens per frame; no audio track is sent).
TOKENS_PER_FRAME = 258
#: USD per 1M input and output tokens (standard tier, text/image/video input, prompts under 200k
#: tokens), from ai.google.dev/gemini-api/docs/pricing as of 2026-11; ``--price`` overrides.
GEMINI_PRICES: dict[str, tuple[float, float]] = {
    "gemini-2.5-pro": (1.25, 10.0),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.0-flash-lite": (0.075, 0.30),
}
#: The Batch API's discount, as OpenAI's.
BATCH_DISCOUNT = 0.5


def gemini_price(model: str) -> tuple[float, float] | None:
    """The listed price of ``model`` (its longest listed family, e.g. a ``-preview-09-2025``
    snapshot of gemini-2.5-flash), or None."""
    name = model.lower().removeprefix("models/")
    best = None
    for family in GEMINI_PRICES:
        if (name == family or name.startswith(family + "-")) and (best is None or len(family) > len(best)):
            best = family
    return GEMINI_PRICES[best] if best else None


def video_fps(frames: int, start_s: float, end_s: float) -> float:
    """The sampling rate of a segment's frames, capped at what Gemini accepts."""
    duration = end_s - start_s
    rate = frames / duration if duration > 0 else MAX_VIDEO_FPS
    return min(max(rate, 0.1), MAX_VIDEO_FPS)


def segment_mp4(frames: np.ndarray, fps: float) -> bytes:
    """The frames ([K, H, W, 3] uint8) as an H.264 mp4 at ``fps``, in memory."""
    from labeler.media.video import write_video

    with tempfile.TemporaryDirectory(prefix="densepref-gemini-") as folder:
        path = write_video(Path(folder) / "segment.mp4", frames, fps, crf=18, preset="veryfast")
        return path.read_bytes()


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int


def usage_of(response: Any) -> Usage:
    """Billed tokens of a GenerateContentResponse: thinking is billed as output."""
    meta = response.usage_metadata
    if meta is None:
        return Usage(0, 0)
    out = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
    return Usage(meta.prompt_token_count or 0, out)


def logprob_tokens(logprobs: Any) -> list[dict[str, Any]] | None:
    """Gemini's ``LogprobsResult`` as OpenAI-style token logprobs (``token``, ``logprob``,
    ``top_logprobs``), so one reader finds the label token in both."""
    if logprobs is None or not logprobs.chosen_candidates:
        return None
    tops = logprobs.top_candidates or []
    out = []
    for i, chosen in enumerate(logprobs.chosen_candidates):
        alternatives = tops[i].candidates or [] if i < len(tops) else []
        out.append(
            {
                "token": chosen.token or "",
                "logprob": chosen.log_probability,
                "top_logprobs": [
                    {"token": alt.token or "", "logprob": alt.log_probability} for alt in alternatives
                ],
            }
        )
    return out


def read_response(response: Any, model: str) -> tuple[Judgment | None, str, JudgeParseError | None]:
    """(judgment or None, raw text, parse error or None) of one GenerateContentResponse."""
    usage = usage_of(response)
    candidates = response.candidates or []
    if not candidates:
        feedback = response.prompt_feedback
        reason = f" (blocked: {feedback.block_reason})" if feedback and feedback.block_reason else ""
        return (
            None,
            "",
            JudgeParseError(f"The response held no candidates{reason}. Reply with the JSON object."),
        )
    candidate = candidates[0]
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    raw = "".join(p.text for p in parts if p.text and not p.thought)
    try:
        answer = parse_answer(raw)
    except JudgeParseError as exc:
        if str(candidate.finish_reason or "").endswith("MAX_TOKENS"):
            exc = JudgeParseError(
                f"{exc} (the answer was cut off at the token limit: keep the rationale short)"
            )
        return None, raw, exc
    probs, source = label_probabilities_or_vote(logprob_tokens(candidate.logprobs_result), answer.label)
    judgment = Judgment(
        label=answer.label,
        p_a=probs["A"],
        p_b=probs["B"],
        p_tie=probs["tie"],
        rationale=answer.rationale,
        raw=raw,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        model=response.model_version or model,
        prob_source=source,
    )
    return judgment, raw, None


def api_key_from_env() -> str | None:
    """The key the SDK itself reads: GOOGLE_API_KEY wins over GEMINI_API_KEY."""
    return os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY")


def estimate_tokens(frames: int, videos: int, fps: float, duration_s: float) -> int:
    """Video input tokens: Gemini samples each video at ``fps`` (at least one frame)."""
    sampled = max(1, min(frames, math.ceil(duration_s * fps)))
    return videos * sampled * TOKENS_PER_FRAME
