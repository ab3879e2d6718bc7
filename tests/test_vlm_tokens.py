"""Qwen-VL image tokens against transformers' own Qwen2-VL image processor (the pil backend,
which needs no torchvision)."""

from __future__ import annotations

import pytest

from labeler.judges.pricing import image_tokens
from labeler.judges.vlm_tokens import QwenVisionRule, qwen_image_tokens, self_hosted_rule

SIZES = [(448, 252), (252, 448), (64, 36), (1920, 1080), (3840, 2160), (28, 28), (500, 17), (1000, 1000)]


@pytest.mark.parametrize("patch_size", [14, 16])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_tokens_match_transformers_processor(width, height, patch_size):
    pil = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    processor = pil.Qwen2VLImageProcessorPil(patch_size=patch_size)
    patches = processor.get_number_of_image_patches(height, width, {})
    expected = patches // processor.merge_size**2
    rule = QwenVisionRule(patch_size=patch_size)
    assert qwen_image_tokens(width, height, rule) == expected + rule.special_tokens


def test_qwen_models_are_costed_with_their_own_rule_not_openais():
    assert self_hosted_rule("Qwen/Qwen2.5-VL-7B-Instruct") is not None
    assert self_hosted_rule("gpt-4o") is None
    assert image_tokens(448, 252, "low", "Qwen/Qwen2.5-VL-7B-Instruct") == 144 + 2
    assert image_tokens(448, 252, "low", "Qwen/Qwen3-VL-8B-Instruct") == 112 + 2
    assert image_tokens(448, 252, "low", "gpt-4o") == 85
