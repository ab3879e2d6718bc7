"""Image tokens of self-hosted VLMs (vLLM), from their processors' own rules, for dry runs and
``--max-model-len`` planning: OpenAI's tile rule (85 tokens per low-detail image) undercounts a
Qwen2.5-VL frame of 448x252 (144 tokens) by ~40 %.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL resize each image to multiples of ``patch_size * merge_size``
pixels within ``[min_pixels, max_pixels]`` (transformers' ``smart_resize``), and spend one token per
``merge_size``x``merge_size`` patches, plus the ``<|vision_start|>``/``<|vision_end|>`` tokens.
The defaults are those of transformers' ``Qwen2VLImageProcessor``; Qwen3-VL uses 16 px patches.
``tests/test_vlm_tokens.py`` checks the counts against transformers' processor itself. A server
started with ``--mm-processor-kwargs '{"max_pixels": N}'`` spends fewer tokens on large images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["QwenVisionRule", "qwen_image_tokens", "self_hosted_rule"]


@dataclass(frozen=True)
class QwenVisionRule:
    patch_size: int = 14
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    special_tokens: int = 2  # <|vision_start|> and <|vision_end|>


#: Name fragment (lower case) -> rule; the first that the model name contains wins.
_RULES: tuple[tuple[str, QwenVisionRule], ...] = (
    ("qwen3-vl", QwenVisionRule(patch_size=16)),
    ("qwen2.5-vl", QwenVisionRule()),
    ("qwen2-vl", QwenVisionRule()),
)


def self_hosted_rule(model: str) -> QwenVisionRule | None:
    name = model.lower()
    return next((rule for fragment, rule in _RULES if fragment in name), None)


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """transformers' qwen2_vl ``smart_resize``: both sides multiples of ``factor``, pixels bounded."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen_image_tokens(width: int, height: int, rule: QwenVisionRule) -> int:
    """Prompt tokens one image costs a Qwen-VL model (see the module doc)."""
    factor = rule.patch_size * rule.merge_size
    h_bar, w_bar = _smart_resize(height, width, factor, rule.min_pixels, rule.max_pixels)
    return (h_bar // factor) * (w_bar // factor) + rule.special_tokens
