"""labeler.judges.pricing against hand computations from OpenAI's documented rules (see the module docstring)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labeler.judges.pricing import (
    BATCH_DISCOUNT,
    PRICES_AS_OF,
    chat_input_tokens,
    estimate_cost,
    image_tokens,
    text_tokens,
)
from labeler.media.images import jpeg_data_uri


@pytest.mark.parametrize(
    ("w", "h", "detail", "model", "tokens"),
    [
        # The documentation's own worked examples (gpt-4o): 1024x1024 -> 768x768 -> 4 tiles.
        (1024, 1024, "high", "gpt-4o", 85 + 4 * 170),
        # 2048x4096 -> 1024x2048 -> 768x1536 -> 2x3 tiles.
        (2048, 4096, "high", "gpt-4o", 85 + 6 * 170),
        (4096, 8192, "low", "gpt-4o", 85),
        # Small frames are not upscaled: 448x252 is one tile, its side-by-side composite (904 wide) two.
        (448, 252, "high", "gpt-4o", 85 + 170),
        (904, 252, "high", "gpt-4o", 85 + 2 * 170),
        (448, 252, "low", "gpt-4o", 85),
        # gpt-4o-mini multiplies image tokens (base 2833, tile 5667).
        (448, 252, "low", "gpt-4o-mini", 2833),
        (1024, 1024, "high", "gpt-4o-mini", 2833 + 4 * 5667),
        # o-series base 75, tile 150.
        (448, 252, "low", "o3", 75),
        (904, 252, "high", "o3", 75 + 2 * 150),
        # "auto" is counted as "high" (an upper bound).
        (448, 252, "auto", "gpt-4o", 85 + 170),
        # Dated snapshots use their family's rule; unknown (self-hosted) models the gpt-4o rule,
        # Qwen-VL models their processor's (tests/test_vlm_tokens.py).
        (448, 252, "low", "gpt-4o-mini-2024-07-18", 2833),
        (448, 252, "low", "gpt-4o-2024-08-06", 85),
        (448, 252, "high", "llava-hf/llava-onevision-qwen2-7b-ov-hf", 85 + 170),
        (448, 252, "high", "Qwen/Qwen2.5-VL-7B-Instruct", 16 * 9 + 2),
        # Patch models: 32 px patches x multiplier, detail ignored. 1024x1024 = 32*32 patches.
        (1024, 1024, "low", "gpt-4.1-mini", math.ceil(1024 * 1.62)),
        (448, 252, "high", "o4-mini", math.ceil(14 * 8 * 1.72)),
        # 1800x2400 needs 4275 patches > 1536: shrunk to 1056x1408 = 33*44 = 1452 patches (docs).
        (1800, 2400, "high", "gpt-4.1-mini", math.ceil(1452 * 1.62)),
    ],
)
def test_image_tokens_match_hand_computation(w, h, detail, model, tokens):
    assert image_tokens(w, h, detail, model) == tokens


def test_image_tokens_rejects_bad_input():
    with pytest.raises(ValueError, match="positive"):
        image_tokens(0, 10)
    with pytest.raises(ValueError, match="detail"):
        image_tokens(10, 10, "medium")


def test_estimate_cost_from_the_price_table():
    assert PRICES_AS_OF.startswith("20")
    # gpt-4o: $2.50 in, $10.00 out per 1M tokens.
    assert estimate_cost("gpt-4o", 1_000_000, 1_000_000) == pytest.approx(12.50)
    assert estimate_cost("gpt-4o", 1_000_000, 1_000_000, batch=True) == pytest.approx(12.50 * BATCH_DISCOUNT)
    # gpt-4o-mini: $0.15 / $0.60; 3,000 in + 60 out.
    assert estimate_cost("gpt-4o-mini-2024-07-18", 3000, 60) == pytest.approx((3000 * 0.15 + 60 * 0.60) / 1e6)
    # o3: $2.00 / $8.00.
    assert estimate_cost("o3", 500_000, 0) == pytest.approx(1.0)
    assert estimate_cost("Qwen/Qwen2.5-VL-7B-Instruct", 1000, 10) is None


def test_text_tokens_rough_estimate_without_the_tokens_extra(monkeypatch):
    from labeler.judges import pricing

    monkeypatch.setattr(pricing, "_o200k_encoding", lambda: None)
    assert text_tokens("x" * 400) == 100
    assert text_tokens("abc") == 1
    assert text_tokens("") == 0


#: SHA-256 of OpenAI's o200k_base.tiktoken, as tiktoken pins it (tiktoken_ext/openai_public.py).
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


def test_text_tokens_are_exact_o200k_offline():
    pytest.importorskip(
        "bpe_openai", reason="exact text tokens need the tokens extra (pip install -e '.[tokens]')"
    )
    import gzip
    import hashlib
    import importlib.resources

    ranks = importlib.resources.files("bpe_openai.data").joinpath("o200k_base.tiktoken.gz").read_bytes()
    assert hashlib.sha256(gzip.decompress(ranks)).hexdigest() == O200K_SHA256  # OpenAI's own ranks
    assert text_tokens("Hello, world!") == 4  # [13225, 11, 2375, 0] in o200k_base
    assert text_tokens("") == 0
    prompt = "Compare the visual quality of two videos. Answer with JSON only."
    assert text_tokens(prompt) != math.ceil(len(prompt) / 4)  # not the characters/4 fallback


def test_chat_input_tokens_counts_text_images_and_framing_alike_for_both_part_shapes():
    image = np.zeros((252, 448, 3), np.uint8)
    neutral = [
        {"role": "system", "content": [{"type": "text", "text": "s" * 40}]},
        {"role": "user", "content": [{"type": "text", "text": "u" * 80}, {"type": "image", "image": image}]},
    ]
    openai = [
        {"role": "system", "content": "s" * 40},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "u" * 80},
                {"type": "image_url", "image_url": {"url": jpeg_data_uri(image), "detail": "high"}},
            ],
        },
    ]
    expected_text = text_tokens("s" * 40) + text_tokens("u" * 80)
    framing = 3 + 2 * 3
    assert chat_input_tokens(openai, "gpt-4o") == (expected_text + framing + 85 + 170, 1)
    assert chat_input_tokens(neutral, "gpt-4o", default_detail="high") == (
        expected_text + framing + 85 + 170,
        1,
    )
    assert chat_input_tokens(neutral, "gpt-4o", default_detail="low") == (expected_text + framing + 85, 1)


@pytest.mark.parametrize("model", ["gpt-5.1", "gpt-5.2-2025-12-11", "gpt-5.4", "gpt-5.5"])
def test_gpt5x_images_keep_the_default_tile_rule_while_openai_publishes_none(model):
    """docs/endpoints.md: no published image rule for gpt-5.1 and later, so they are counted
    with gpt-4o's tiles (85 + 170 a tile), not gpt-5's 70/140 nor a patch rule."""
    assert image_tokens(1024, 1024, "high", model) == image_tokens(1024, 1024, "high", "gpt-4o") == 765
    assert image_tokens(1024, 1024, "low", model) == 85
    assert image_tokens(1024, 1024, "high", "gpt-5") == 70 + 4 * 140
