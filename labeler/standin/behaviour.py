"""What the stand-in answers: policies, scripted faults' shapes, completions with logprobs."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
import uuid
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

Policy = Literal["hash", "first", "second", "tie", "garbage", "sharpness"]
Flavour = Literal["openai", "vllm"]
#: vLLM clamps -inf logprobs (tokens its grammar masked out) to this (serving_chat.py).
VLLM_MASKED_LOGPROB = -9999.0
GARBAGE = "Both clips look rather nice to me; it is hard to say which one I would pick, honestly."
_LABELS = ("A", "B", "tie")


#: vLLM's structured-output backends (``StructuredOutputsBackend``) and the constraint fields of
#: ``StructuredOutputsParams`` (vllm/sampling_params.py), of which a request must set exactly one.
VLLM_BACKENDS = ("auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer")
VLLM_CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


def vllm_structured_outputs_error(options: Any, response_format: Any = None) -> str | None:
    """What vLLM 0.34 answers (400) for a request's ``structured_outputs`` object, or None if it
    takes it: ``ChatCompletionRequest.check_structured_outputs_count`` and
    ``StructuredOutputsParams.__post_init__`` want exactly one constraint. A judge body
    always carries ``response_format``, but vLLM builds the params from ``structured_outputs`` alone
    when it parses the body, before ``response_format`` is merged in."""
    if options is None:
        return None
    if not isinstance(options, dict):
        return "structured_outputs must be an object"
    # ChatCompletionRequest.check_structured_outputs_count runs first, over three of the kinds.
    if sum(options.get(k) is not None for k in ("json", "regex", "choice")) > 1:
        return (
            "You can only use one kind of constraints for structured outputs ('json', 'regex' or 'choice')."
        )
    count = sum(options.get(k) is not None for k in VLLM_CONSTRAINTS)
    if count < 1:
        return "You must use one kind of structured outputs constraint but none are specified"
    # to_sampling_params then sets the response_format's constraint on top of the request's own
    # (structured_outputs_from_response_format): a second kind is refused.
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    added = {"json_schema": "json", "json_object": "json_object"}.get(str(kind))
    if added is not None:
        count = sum(options.get(k) is not None for k in VLLM_CONSTRAINTS if k != added) + 1
    if count > 1:
        return "You can only use one kind of structured outputs constraint but multiple are specified"
    return None


class StandinConfig(BaseModel):
    """Run-time settings; ``POST /_control`` accepts any subset of them (unknown keys are a 422)."""

    model_config = ConfigDict(extra="forbid")

    policy: Policy = "hash"
    latency_ms: float = 0.0
    max_concurrency: int = 64
    logprobs: bool = True
    supports_logprobs: bool = True
    supports_response_format: bool = True
    api_key: str | None = None
    models: list[str] = []
    sharpness_margin: float = 0.05
    batch_delay_s: float = 0.05
    faults: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    #: "vllm": like ``vllm serve`` — no Files or Batch API (404 from its router), ``strict`` ignored,
    #: logprobs after the structured-output grammar (masked alternatives at -9999.0).
    flavour: Flavour = "openai"
    #: vllm flavour: under a json_schema the model emits whitespace until max_tokens (xgrammar
    #: issue 212, seen with Qwen models) unless the server runs with ``disable_any_whitespace``.
    whitespace_loop: bool = False
    #: vllm flavour: ``vllm serve --structured-outputs-config JSON`` (vllm/config/structured_outputs.py).
    structured_outputs_config: dict[str, Any] = {}
    #: OpenAI Batch API: input tokens a model may have enqueued across unfinished batches; a batch
    #: over it fails with ``token_limit_exceeded`` (None: no limit).
    batch_enqueued_token_limit: int | None = None
    #: Like an OpenAI reasoning model (platform.openai.com/docs/guides/reasoning): this many hidden
    #: reasoning tokens are spent before the answer, counted in ``max_completion_tokens`` /
    #: ``max_tokens`` and billed as completion tokens (``completion_tokens_details.reasoning_tokens``);
    #: a limit below them ends in ``finish_reason: "length"`` with empty content.
    reasoning_tokens: int = 0
    #: Like OpenAI's prompt caching (platform.openai.com/docs/guides/prompt-caching): this many of
    #: each prompt's tokens (at most all of them) are reported as
    #: ``usage.prompt_tokens_details.cached_tokens`` (CompletionUsage in OpenAI's OpenAPI document).
    cached_prompt_tokens: int = 0
    #: OpenAI Batch API: a batch expires (status ``expired``) after answering this many lines; the
    #: rest go to its error file with ``response: null`` and error code ``batch_expired``.
    batch_expire_after: int | None = None
    #: Statuses served, one per call and in order, to the Batch API's polling and download routes
    #: (``GET /v1/batches/{id}``, ``GET /v1/files/{id}/content``), e.g. ``[500, 502]``.
    batch_route_faults: list[int] = []

    @model_validator(mode="after")
    def _vllm_server_flags(self) -> StandinConfig:
        """``vllm serve`` refuses to start on these (``StructuredOutputsConfig`` validator)."""
        cfg = self.structured_outputs_config
        backend = cfg.get("backend", "auto")
        if backend not in VLLM_BACKENDS:
            raise ValueError(f"structured_outputs_config.backend must be one of {VLLM_BACKENDS}")
        if cfg.get("disable_any_whitespace") and backend not in ("xgrammar", "guidance"):
            raise ValueError("disable_any_whitespace is only supported for xgrammar and guidance backends.")
        return self


# --------------------------------------------------------------------------- request analysis


@functools.lru_cache(maxsize=1024)
def _digest(text: str) -> str:
    # Each image URL (hundreds of kB) is hashed once, though the request key, the image digest, the
    # "hash" policy and the log all need it: the stand-in shares the benchmark machine's cores.
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def canonical_hash(body: Any) -> str:
    """The request's identity: its JSON with every image replaced by the image's hash."""
    return hashlib.sha256(
        json.dumps(_sanitize(body), sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:16]


def image_digest(image_urls: list[str]) -> str:
    """What ``{"image_hash": ...}`` rules match: a hash of all the request's image URLs, in order."""
    return hashlib.sha256("".join(_digest(u) for u in image_urls).encode()).hexdigest()[:16]


def _parts(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(texts, image URLs) of every message, in order."""
    texts, images = [], []
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                images.append(str((part.get("image_url") or {}).get("url", "")))
    return texts, images


def _sanitize(body: dict[str, Any]) -> dict[str, Any]:
    """The body with every data URI replaced by a short hash (for the request log)."""

    def fix(obj: Any) -> Any:
        if isinstance(obj, str) and obj.startswith("data:"):
            return "<image " + _digest(obj)[:12] + ">"
        if isinstance(obj, list):
            return [fix(x) for x in obj]
        if isinstance(obj, dict):
            return {k: fix(v) for k, v in obj.items()}
        return obj

    return fix(body)


def _sharpness(image: np.ndarray) -> float:
    g = image.astype(np.float32).mean(axis=2)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(lap.var())


def _split_composite(image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(first, second) of a composite: left | right, or top over bottom (labeler.judges.composite
    stacks landscape frames at detail low), found by the bright centre stripe; else None."""
    halves = _split_left_right(image)
    if halves is None:
        flipped = _split_left_right(image.transpose(1, 0, 2))
        halves = None if flipped is None else (flipped[0].transpose(1, 0, 2), flipped[1].transpose(1, 0, 2))
    return halves


def _split_left_right(image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    width = image.shape[1]
    bright = image.min(axis=(0, 2)) >= 200  # JPEG ringing keeps the white stripe above ~200
    centre = width // 2
    if width < 8 or not bright[centre - 1 : centre + 1].all():
        return None
    left, right = centre - 1, centre
    while left > 0 and bright[left - 1]:
        left -= 1
    while right < width - 1 and bright[right + 1]:
        right += 1
    if right - left + 1 < 4 or left < 2 or right > width - 3:
        return None
    return image[:, :left], image[:, right + 1 :]


def sharpness_scores(image_urls: list[str]) -> tuple[float, float, str]:
    """Mean Laplacian variance of the first and second video's frames, and the detected layout."""
    from labeler.media.images import data_uri_bytes, decode_image

    images = [decode_image(data_uri_bytes(u), max_pixels=4096 * 4096) for u in image_urls]
    if not images:
        raise ValueError("the sharpness policy needs images")
    halves = [_split_composite(img) for img in images]
    if all(h is not None for h in halves):
        first = [h[0] for h in halves if h is not None]
        second = [h[1] for h in halves if h is not None]
        layout = "side-by-side"
    else:
        if len(images) % 2:
            raise ValueError(f"{len(images)} separate images cannot be split into two videos")
        first, second, layout = images[: len(images) // 2], images[len(images) // 2 :], "separate"
    return (
        float(np.mean([_sharpness(i) for i in first])),
        float(np.mean([_sharpness(i) for i in second])),
        layout,
    )


def _softmax(logits: dict[str, float]) -> dict[str, float]:
    top = max(logits.values())
    exp = {k: math.exp(v - top) for k, v in logits.items()}
    total = sum(exp.values())
    return {k: v / total for k, v in exp.items()}


def decide(policy: str, image_urls: list[str], margin: float = 0.05) -> tuple[dict[str, float], str]:
    """(label probabilities, rationale) under a policy; the label is the most probable one."""
    if policy == "first":
        return {"A": 0.9, "B": 0.02, "tie": 0.08}, "Video A looks cleaner to me."
    if policy == "second":
        return {"A": 0.02, "B": 0.9, "tie": 0.08}, "Video B looks cleaner to me."
    if policy == "tie":
        return {"A": 0.1, "B": 0.1, "tie": 0.8}, "Both videos show similar artifacts."
    if policy == "sharpness":
        s1, s2, layout = sharpness_scores(image_urls)
        rel = (s1 - s2) / max(s1, s2, 1e-9)
        probs = _softmax({"A": rel / margin, "B": -rel / margin, "tie": 1.0})
        return probs, f"Sharpness {s1:.1f} vs {s2:.1f} ({layout} layout)."
    digest = int(image_digest(image_urls), 16)
    order = [_LABELS[(digest + i) % 3] for i in range(3)]
    top = 0.5 + (digest >> 8) % 45 / 100  # 0.50 .. 0.94
    probs = {order[0]: top, order[1]: (1 - top) * 0.7, order[2]: (1 - top) * 0.3}
    return probs, f"Deterministic answer {digest % 997} for these frames."


def answer_tokens(rationale: str, label: str, *, label_first: bool = False) -> list[str]:
    """The answer JSON split the way BPE tokenizers split it, the label value its own token, in
    the field order the request's schema asks for (structured outputs follow schema order)."""
    words = re.findall(r"\s*\S+", json.dumps(rationale)[1:-1])
    if label_first:
        return ['{"', "label", '":', ' "', label, '",', ' "', "rationale", '":', ' "', *words, '"}']
    return ['{"', "rationale", '":', ' "', *words, '",', ' "', "label", '":', ' "', label, '"}']


def schema_label_first(body: dict[str, Any]) -> bool:
    """Whether the request's json_schema lists ``label`` before ``rationale``."""
    fmt = body.get("response_format")
    schema = ((fmt or {}).get("json_schema") or {}).get("schema") if isinstance(fmt, dict) else None
    props = list((schema or {}).get("properties") or {}) if isinstance(schema, dict) else []
    return bool(props) and props[0] == "label"


def _logprob_entry(token: str, logprob: float, alternatives: list[tuple[str, float]]) -> dict[str, Any]:
    def one(tok: str, lp: float) -> dict[str, Any]:
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode())}

    return {**one(token, logprob), "top_logprobs": [one(t, lp) for t, lp in alternatives]}


def _masked(alternatives: list[tuple[str, float]], top: int) -> list[tuple[str, float]]:
    """Fill top_logprobs up to ``top`` with tokens a grammar masked out, as vLLM reports them."""
    fillers = [f"<masked {i}>" for i in range(top)]
    return (alternatives + [(f, VLLM_MASKED_LOGPROB) for f in fillers])[:top]


def build_completion(
    model: str,
    content: str,
    tokens: list[str],
    probs: dict[str, float] | None,
    top: int | None,
    prompt_tokens: int,
    *,
    grammar_masked: bool = False,
    finish_reason: str = "stop",
) -> dict[str, Any]:
    """A chat.completion object; ``logprobs`` when ``top`` is not None. ``grammar_masked``: the
    logprobs are read after the structured-output grammar, so a forced token has logprob 0 and
    every alternative outside the grammar -9999.0 (vLLM)."""
    logprobs = None
    if top is not None:
        entries: list[dict[str, Any]] = []
        forced = 0.0 if grammar_masked else -0.001
        for tok in tokens:
            if probs is not None and tok in probs and entries and entries[-1]["token"] == ' "':
                ranked = sorted(probs.items(), key=lambda kv: -kv[1])
                alts = [(k, math.log(max(v, 1e-12))) for k, v in ranked][:top]
                alts = _masked(alts, top) if grammar_masked else alts
                entries.append(_logprob_entry(tok, math.log(max(probs[tok], 1e-12)), alts))
            else:
                alts = [(tok, forced)][:top]
                entries.append(_logprob_entry(tok, forced, _masked(alts, top) if grammar_masked else alts))
        logprobs = {"content": entries, "refusal": None}
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        },
    }


def _error(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code or str(status)}}
