"""A tiny random-weight Qwen2-VL and its processor parts, built entirely in code (no downloads).

``build_tiny_qwen2_vl(path)`` saves a ``Qwen2VLForConditionalGeneration`` (~60k parameters), a
``Qwen2VLImageProcessorPil``, a byte-level tokenizer with Qwen's special tokens and a ChatML
template with Qwen's ``<|vision_start|><|image_pad|>/<|video_pad|><|vision_end|>`` placeholders,
laid out like a real checkpoint folder. No ``Qwen2VLProcessor`` is saved: in transformers 5.x it
cannot even be constructed without torchvision (its video-processor class is a dummy), which is
why the hf judge loads these parts itself (labeler.judges.hf_qwen).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, IM_START, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE, VIDEO = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
SPECIAL_TOKENS = (PAD, IM_START, EOS, VISION_START, VISION_END, IMAGE, VIDEO)

# Qwen2-VL's chat template, cut to what the judge's prompts use (no tools, no "image_url" keys).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Merges that make the answer words single tokens, like Qwen's vocabulary does.
_WORD_MERGES = (("t", "i"), ("ti", "e"), ("l", "a"), ("la", "b"), ("lab", "e"), ("labe", "l"))
# Frames are resized to 28-pixel multiples between these pixel counts: 2x2 to 4x4 merged tokens.
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112


def build_tiny_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE over the 256 byte symbols plus Qwen's special tokens (no BOS, like Qwen)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for left, right in _WORD_MERGES:
        vocab.setdefault(left + right, len(vocab))
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(_WORD_MERGES)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE, "video_token": VIDEO},
        additional_special_tokens=[IM_START, VISION_START, VISION_END, IMAGE, VIDEO],
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_qwen2_vl(path: Path, seed: int = 0, *, family: str = "qwen2_vl") -> Path:
    """Save a tiny random Qwen2-VL (``family="qwen2_5_vl"``: Qwen2.5-VL) checkpoint: model,
    tokenizer + template, image processor (Qwen2.5-VL uses Qwen2-VL's)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    path = Path(path)
    tok = build_tiny_qwen_tokenizer()
    ids = {name: tok.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    vision: dict[str, object] = {
        "depth": 2,
        "hidden_size": 32,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if family == "qwen2_5_vl":  # windowed attention in all blocks but the last; 2 positions a second
        vision |= {
            "intermediate_size": 64,
            "out_hidden_size": 32,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        }
    else:
        vision |= {"embed_dim": 32, "mlp_ratio": 2}
    config_class, model_class = {
        "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration),
        "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration),
    }[family]
    config = config_class(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            # head_dim 8 = 4 rotary pairs, split over time / height / width by M-RoPE
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
            "initializer_range": 0.3,  # spread the logits, so label probabilities differ visibly
            "bos_token_id": None,
            "eos_token_id": ids[EOS],
            "pad_token_id": ids[PAD],
        },
        vision_config=vision,
        image_token_id=ids[IMAGE],
        video_token_id=ids[VIDEO],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
    )
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config.eos_token_id = ids[EOS]
    model.generation_config.pad_token_id = ids[PAD]
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS).save_pretrained(path)
    return path
