"""A tiny random-weight LLaVA and its processor, built entirely in code (no downloads).

``build_tiny_vlm(path)`` saves a model, image processor, tokenizer and chat template with
``save_pretrained`` so that ``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained(path)``
load it exactly like a real checkpoint. The model has ~75k parameters and answers nonsense, but
its logits depend on every input token and pixel, which is what judge tests need.

Why LLaVA and not Qwen2-VL: in transformers 5.x the Qwen2-VL processor needs a video processor,
which needs torchvision, which this project does not install. LLaVA's processor is an image
processor (CLIP, PIL backend) plus a tokenizer, nothing else.

The tokenizer is byte-level BPE over the 256 byte symbols (so any text round-trips) plus a few
merges, and it prepends a BOS token like Llama's does (the chat template writes one too, so a
judge that tokenizes the rendered template must not add a second). ``quote_merges=True`` adds
merges that glue a quote onto the label words (``"A``), as some real tokenizers do, to exercise
the judge's label-token resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlavaProcessor, PreTrainedTokenizerFast

BOS, EOS, PAD, IMAGE = "<s>", "<|im_end|>", "<pad>", "<image>"
SPECIAL_TOKENS = (BOS, PAD, "<|im_start|>", EOS, IMAGE)

# A ChatML template with LLaVA's <image> placeholder; the processor expands each placeholder to
# the image's number of patch tokens.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Merges that make a few answer words single tokens, like a real vocabulary would.
_WORD_MERGES = (("t", "i"), ("ti", "e"), ("l", "a"), ("la", "b"), ("lab", "e"), ("labe", "l"))
# Merges gluing a quote onto the answer labels: `"A`, `"B`, `"tie` become single tokens.
_QUOTE_MERGES = (('"', "A"), ('"', "B"), ('"', "tie"))

# Vision tower geometry: a 56x56 crop in 14-pixel patches -> 16 image tokens per image.
IMAGE_SIZE, PATCH_SIZE = 56, 14


def build_tiny_tokenizer(*, quote_merges: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ChatML/LLaVA special tokens and a BOS.

    No regex pre-splitting (``use_regex=False``) so merges can span punctuation, which is what
    ``quote_merges`` needs to mimic tokenizers whose label tokens swallow the opening quote.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = list(_WORD_MERGES) + (list(_QUOTE_MERGES) if quote_merges else [])
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        additional_special_tokens=["<|im_start|>", IMAGE],
    )


def build_tiny_processor(*, quote_merges: bool = False, chat_template: str = CHAT_TEMPLATE) -> LlavaProcessor:
    """LLaVA processor: CLIP image processor (PIL backend), tiny tokenizer, chat template."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tiny_tokenizer(quote_merges=quote_merges),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by the "default" strategy
        chat_template=chat_template,
        image_token=IMAGE,
    )


def build_tiny_vlm(
    path: Path, seed: int = 0, *, quote_merges: bool = False, chat_template: str = CHAT_TEMPLATE
) -> Path:
    """Save a tiny random LLaVA (model + processor) to ``path`` and return ``path``.

    ``seed`` fixes the random weights: the same seed gives identical weights, another seed
    different ones (tests use that to check that judge fingerprints follow the weights).
    ``chat_template`` replaces the ChatML one (e.g. with a template that refuses system turns).
    """
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    path = Path(path)
    processor = build_tiny_processor(quote_merges=quote_merges, chat_template=chat_template)
    tok = processor.tokenizer
    ids = {name: tok.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,  # LLaVA reads the second-to-last layer's features
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "initializer_range": 0.3,  # spread the logits, so label probabilities differ visibly
            "bos_token_id": ids[BOS],
            "eos_token_id": ids[EOS],
            "pad_token_id": ids[PAD],
        },
        image_token_index=ids[IMAGE],
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.bos_token_id = ids[BOS]
    model.generation_config.eos_token_id = ids[EOS]
    model.generation_config.pad_token_id = ids[PAD]
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


if __name__ == "__main__":  # python tests/hf_tiny.py OUT_DIR: a model to try the hf judge by hand
    import sys

    print(build_tiny_vlm(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-llava")))
