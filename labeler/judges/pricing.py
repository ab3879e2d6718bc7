"""What a judge request costs: text and image tokens, and USD for OpenAI models.

The numbers are a small, dated, editable table — check them against the sources before
budgeting real money:

- Prices (USD per 1M tokens, standard tier; the Batch API takes 50 % off input and output) live
  in labeler.judges.models_table with their date and sources; ``price`` overrides them
  (``--price IN,OUT``) for a model the table does not list.
- Image tokens: https://platform.openai.com/docs/guides/images-vision#calculating-costs
  * tile models (gpt-4o, gpt-4.1, gpt-4o-mini, o1/o3, gpt-5): ``detail: low`` costs a fixed base;
    ``high`` scales the image to fit 2048x2048, then its shortest side to 768 px, and costs
    base + tiles x per-tile, one tile per 512 px square. The per-model base/tile pairs differ:
    4o/4.1/4.5 85/170, 4o-mini 2833/5667, o1/o3 75/150, gpt-5 70/140.
  * patch models (gpt-4.1-mini/nano, o4-mini, gpt-5-mini/nano): one token per 32 px patch, at most
    1536 (the image is shrunk to fit), times a model multiplier; ``detail`` does not matter.
  * The 768 px step only shrinks: measured bills show a 128x64 image at ``high`` costs one tile on
    gpt-4o (https://community.openai.com/t/vision-more-than-one-way-to-send-a-request-undocumented-and-different-pricing-realized/1262691),
    so small images are not upscaled.
- Self-hosted models (vLLM) have no price here (``estimate_cost`` returns None). Their image tokens
  follow their own processor: Qwen2-VL/2.5-VL/3-VL by labeler.judges.vlm_tokens; any other model
  falls back to the gpt-4o tile rule as a rough stand-in.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from labeler.judges.models_table import BATCH_DISCOUNT, MODELS, TABLE_AS_OF, lookup
from labeler.judges.vlm_tokens import qwen_image_tokens, self_hosted_rule

__all__ = [
    "BATCH_DISCOUNT",
    "PRICES",
    "PRICES_AS_OF",
    "chat_input_tokens",
    "estimate_cost",
    "image_tokens",
    "text_tokens",
]

PRICES_AS_OF = TABLE_AS_OF

#: model family -> (input USD per 1M tokens, output USD per 1M tokens), from models_table. A name
#: is priced only as its exact family or a dated snapshot of it (models_table.lookup).
PRICES: dict[str, tuple[float, float]] = {name: (m.input_usd, m.output_usd) for name, m in MODELS.items()}


@dataclass(frozen=True)
class _TileRule:
    base: int
    tile: int


@dataclass(frozen=True)
class _PatchRule:
    multiplier: float


_IMAGE_RULES: dict[str, _TileRule | _PatchRule] = {
    "gpt-4o": _TileRule(85, 170),
    "chatgpt-4o": _TileRule(85, 170),
    "gpt-4.1": _TileRule(85, 170),
    "gpt-4.5": _TileRule(85, 170),
    "gpt-4o-mini": _TileRule(2833, 5667),
    "o1": _TileRule(75, 150),
    "o3": _TileRule(75, 150),
    "gpt-5": _TileRule(70, 140),
    "computer-use-preview": _TileRule(65, 129),
    "gpt-4.1-mini": _PatchRule(1.62),
    "gpt-4.1-nano": _PatchRule(2.46),
    "o4-mini": _PatchRule(1.72),
    "gpt-5-mini": _PatchRule(1.62),
    "gpt-5-nano": _PatchRule(2.46),
}
_DEFAULT_RULE = _IMAGE_RULES["gpt-4o"]
_PATCH = 32
_PATCH_BUDGET = 1536


def _family(model: str, table: dict[str, Any]) -> str | None:
    """The longest table key that ``model`` equals or extends with '-...' (dated snapshots)."""
    name = model.lower().rsplit("/", 1)[-1]
    best = None
    for key in table:
        if (name == key or name.startswith(key + "-")) and (best is None or len(key) > len(best)):
            best = key
    return best


def _tile_tokens(width: int, height: int, rule: _TileRule) -> int:
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(math.floor(w) / 512) * math.ceil(math.floor(h) / 512)
    return rule.base + rule.tile * tiles


def _patch_tokens(width: int, height: int, rule: _PatchRule) -> int:
    patches = math.ceil(width / _PATCH) * math.ceil(height / _PATCH)
    if patches > _PATCH_BUDGET:
        # The documented shrink: fit the budget, then snap the width or height to whole patches.
        shrink = math.sqrt(_PATCH_BUDGET * _PATCH**2 / (width * height))
        w_p, h_p = width * shrink / _PATCH, height * shrink / _PATCH
        shrink *= min(math.floor(w_p) / w_p, math.floor(h_p) / h_p)
        patches = math.ceil(int(width * shrink) / _PATCH) * math.ceil(int(height * shrink) / _PATCH)
    return math.ceil(min(patches, _PATCH_BUDGET) * rule.multiplier)


def image_tokens(width: int, height: int, detail: str = "auto", model: str = "gpt-4o") -> int:
    """Input tokens OpenAI bills for one image. ``detail="auto"`` is counted as "high" (an upper
    bound: the server picks). Unknown models use the gpt-4o rule."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if detail not in ("low", "high", "auto"):
        raise ValueError(f"detail must be 'low', 'high' or 'auto', got {detail!r}")
    if (qwen := self_hosted_rule(model)) is not None:
        return qwen_image_tokens(width, height, qwen)  # the model's processor, not OpenAI's rule
    family = _family(model, _IMAGE_RULES)
    rule = _IMAGE_RULES[family] if family else _DEFAULT_RULE
    if isinstance(rule, _PatchRule):
        return _patch_tokens(width, height, rule)
    if detail == "low":
        return rule.base
    return _tile_tokens(width, height, rule)


@functools.lru_cache(maxsize=1)
def _o200k_encoding() -> Any:
    """OpenAI's o200k_base encoding (gpt-4o, gpt-4.1, o-series, gpt-5.x) from ``bpe-openai`` (the
    ``tokens`` extra), or None without it. Not tiktoken: tiktoken downloads the encoding's ranks
    file at first use, which fails offline; bpe-openai's wheel ships that file
    (bpe_openai/data/o200k_base.tiktoken.gz, the same bytes as OpenAI's: tests/test_pricing.py
    checks its SHA-256 against the digest tiktoken pins). Looked up once: Python does not remember a
    failed import, so trying it on every call searched sys.path each time (~76 file lookups per
    16-image request on the stand-in server; benchmarks/throughput.py)."""
    try:
        import bpe_openai
    except ImportError:
        return None
    return bpe_openai.get_encoding("o200k_base")


def text_tokens(text: str) -> int:
    """Tokens of ``text``: exact (o200k_base) with the ``tokens`` extra installed, else ~4
    characters per token (about 5 % short on this project's prompts)."""
    encoding = _o200k_encoding()
    if encoding is None:
        return math.ceil(len(text) / 4)
    return len(encoding.encode(text))


def estimate_cost(
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    batch: bool = False,
    price: tuple[float, float] | None = None,
    cached_tokens: int = 0,
) -> float | None:
    """USD for a request, or None for a model without a listed price (e.g. a self-hosted VLM).
    ``cached_tokens`` (part of ``input_tokens``, ``usage.prompt_tokens_details.cached_tokens``) are
    billed at the model's cached-input rate, or at its input rate where it has none. ``price``
    (input, output USD per 1M tokens) overrides the table; it names no cached rate, so cached
    tokens are then billed as input."""
    if not 0 <= cached_tokens <= input_tokens:
        raise ValueError(
            f"cached_tokens must be within 0..input_tokens ({input_tokens}), got {cached_tokens}"
        )
    cached_rate = None
    if price is None:
        info = lookup(model)
        if info is None:
            return None
        price, cached_rate = (info.input_usd, info.output_usd), info.cached_input_usd
    if cached_rate is None:
        cached_rate = price[0]
    cost = (
        (input_tokens - cached_tokens) * price[0] + cached_tokens * cached_rate + output_tokens * price[1]
    ) / 1_000_000
    return cost * BATCH_DISCOUNT if batch else cost


# Chat framing: a few tokens per message plus the reply primer (OpenAI cookbook's counting rule).
_TOKENS_PER_MESSAGE = 3
_REPLY_PRIMER = 3


_HEADER_CHARS = 16384  # a multiple of 4: whole base64 quanta


def _image_size(part: dict[str, Any]) -> tuple[int, int] | None:
    if part.get("type") == "image":  # neutral part from labeler.judges.prompts: an array
        h, w = part["image"].shape[:2]
        return int(w), int(h)
    url = (part.get("image_url") or {}).get("url", "")
    if url.startswith("data:"):
        from labeler.media.images import data_uri_bytes, image_size

        # The size sits in the header: decoding the first 16 KiB of base64 is enough, and far
        # cheaper than the whole image (the stand-in counts tokens of every request this way).
        head = url[: url.find(",") + 1 + _HEADER_CHARS]
        try:
            return image_size(data_uri_bytes(head))
        except ValueError:
            return image_size(data_uri_bytes(url))
    return None  # a remote URL: size unknown without fetching it


def chat_input_tokens(
    messages: Iterable[dict[str, Any]], model: str, *, default_detail: str = "auto"
) -> tuple[int, int]:
    """(estimated input tokens, image count) of chat messages, OpenAI ``image_url`` parts
    (size read from the data URI's header) or neutral ``image`` parts alike. The stand-in server
    reports ``usage.prompt_tokens`` with this same estimate."""
    total, images = _REPLY_PRIMER, 0
    for message in messages:
        total += _TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += text_tokens(content)
            continue
        for part in content or []:
            if part.get("type") == "text":
                total += text_tokens(part.get("text", ""))
            elif part.get("type") in ("image_url", "image"):
                images += 1
                size = _image_size(part) or (512, 512)
                detail = (part.get("image_url") or {}).get("detail", default_detail)
                total += image_tokens(size[0], size[1], detail, model)
    return total, images
