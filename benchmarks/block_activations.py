"""Bytes autograd saves for backward in one Wan transformer block at real width (CPU, bf16).

    python -m benchmarks.block_activations [--tokens 1024 2048] [--models 1.3B 14B]

A one-block ``WanTransformer3DModel`` with the real model's width, heads, FFN and text width is built
(random weights, frozen as in LoRA training, rank-128 LoRA on the attention projections), a latent
of ``tokens`` video tokens goes through it, and ``torch.autograd.graph.saved_tensors_hooks`` counts
the distinct storages the block (``blocks[0]``) saves. That is what a gradient-checkpointed block
holds while it is recomputed in backward. Two token counts give the per-token slope (and show
whether anything grows with tokens squared); the docs scale it to 32,760 tokens per video (81 frames
at 480x832) x 2 videos per pair. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

#: The diffusers transformer configs of Wan2.1-T2V-1.3B and -14B (their transformer/config.json).
CONFIGS: dict[str, dict[str, Any]] = {
    "1.3B": {"num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960},
    "14B": {"num_attention_heads": 40, "attention_head_dim": 128, "ffn_dim": 13824},
}


def saved_bytes(model: str, tokens: int) -> int:
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig

    torch.manual_seed(0)
    built: Any = WanTransformer3DModel(
        patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, num_layers=1,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, **CONFIGS[model],
    )  # fmt: skip
    transformer: Any = built.to(torch.bfloat16)
    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(r=128, lora_alpha=128, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    seen: dict[tuple[int, int], int] = {}
    active = [False]

    def pack(t: torch.Tensor) -> torch.Tensor:
        if active[0]:
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), t.device.index or 0)] = storage.nbytes()
        return t

    block = transformer.blocks[0]
    block.register_forward_pre_hook(lambda *_: active.__setitem__(0, True))
    block.register_forward_hook(lambda *_: active.__setitem__(0, False))
    if tokens % 64:
        raise ValueError(f"tokens must be a multiple of 64 (4 latent frames x 16 patch rows), got {tokens}")
    # 4 latent frames x 16 x (tokens / 64) patches of 2x2 latent pixels = tokens video tokens.
    latents = torch.randn(1, 16, 4, 32, 2 * tokens // 64, dtype=torch.bfloat16)
    text = torch.randn(1, 512, 4096, dtype=torch.bfloat16)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = transformer(hidden_states=latents, timestep=torch.tensor([500.0]), encoder_hidden_states=text,
                          return_dict=False)[0]  # fmt: skip
    del out
    return sum(seen.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.block_activations", description=__doc__)
    parser.add_argument("--tokens", type=int, nargs=2, default=[1024, 2048])
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args(argv)
    results = {}
    for model in args.models:
        small, large = (saved_bytes(model, n) for n in args.tokens)
        per_token = (large - small) / (args.tokens[1] - args.tokens[0])
        at_81 = small + per_token * (32_760 - args.tokens[0])
        results[model] = {
            "tokens": args.tokens, "saved_bytes": [small, large], "bytes_per_token": per_token,
            "per_video_81_frames_gb": at_81 / 1e9, "per_pair_81_frames_gb": 2 * at_81 / 1e9,
        }  # fmt: skip
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
