"""The tiny Wan adapter, LoRA reference switching, shared noise/t in a step, and the step benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from tests.conftest import textured_frames
from trainer.models import UnknownModelError, UnsupportedModelError, WanAdapter, load_adapter
from trainer.step import flow_errors, lora_disabled
from trainer.steptime import measure_step_time
from trainer.train import add_lora


def test_tiny_model_is_tiny_and_deterministic(tiny_adapter):
    transformer = tiny_adapter.load_transformer()
    _tokenizer, encoder = tiny_adapter.text_encoder
    counts = [sum(p.numel() for p in m.parameters()) for m in (transformer, tiny_adapter.vae, encoder)]
    assert 10_000 < sum(counts) < 100_000
    again = WanAdapter("tiny").load_transformer()
    assert all(torch.equal(a, b) for a, b in zip(transformer.parameters(), again.parameters(), strict=True))


def test_encode_decode_and_prompt_shapes(tiny_adapter):
    frames = textured_frames(33, h=64, w=64)
    latents = tiny_adapter.encode_video(frames)
    assert latents.shape == (16, 9, 8, 8) and latents.dtype == torch.float32
    assert torch.equal(latents, tiny_adapter.encode_video(frames))  # the mode, not a sample
    video = tiny_adapter.decode_latents(latents[None])
    assert video.shape == (1, 33, 64, 64, 3) and video.dtype == np.uint8
    embeds = tiny_adapter.encode_prompts(["short", "a much longer prompt than the other"])
    assert embeds.shape == (2, 32, 32)
    assert torch.all(embeds[0, 7:] == 0) and torch.any(embeds[1, 7:] != 0)  # padding zeroed, as WanPipeline


def test_load_adapter_reads_model_index(tmp_path):
    assert isinstance(load_adapter(index_dir(tmp_path, "wan", {"_class_name": "WanPipeline"})), WanAdapter)
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(UnknownModelError, match="FluxPipeline"):
        load_adapter(str(other))


def index_dir(root, name: str, index: dict, vae: dict | None = None) -> str:
    """A model directory with ``model_index.json`` and ``vae/config.json`` (default: Wan2.1's VAE
    config, which names no scale factors: diffusers' defaults, 8 and 4, apply)."""
    path = root / name
    (path / "vae").mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps(index))
    (path / "vae" / "config.json").write_text(
        json.dumps(vae or {"_class_name": "AutoencoderKLWan", "z_dim": 16})
    )
    return str(path)


#: Wan2.2's VAE (Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json) at a tiny width: patchified 2x2
#: RGB in (12 channels), residual down blocks, 48 latent channels, 16x spatial compression.
WAN22_VAE = {"base_dim": 8, "decoder_base_dim": 8, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1,
             "is_residual": True, "patch_size": 2, "in_channels": 12, "out_channels": 12, "z_dim": 48,
             "scale_factor_spatial": 16, "scale_factor_temporal": 4, "temperal_downsample": [False, True, True],
             "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48}  # fmt: skip


def test_wan22_ti2v_takes_its_compression_and_channels_from_the_vae_config_and_its_presets(tmp_path):
    from diffusers import AutoencoderKLWan

    ti2v = {"_class_name": "WanPipeline", "expand_timesteps": True, "boundary_ratio": None,
            "transformer_2": [None, None]}  # fmt: skip
    path = index_dir(tmp_path, "Wan2.2-TI2V-5B", ti2v)
    AutoencoderKLWan(**WAN22_VAE).save_pretrained(f"{path}/vae")
    adapter = load_adapter(path)
    assert (adapter.spatial_compression, adapter.temporal_compression, adapter.latent_channels) == (16, 4, 48)
    assert (adapter.height, adapter.width, adapter.num_frames, adapter.fps) == (704, 1280, 121, 24.0)
    adapter.check_geometry(121, 704, 1280)  # multiples of 16 x patch 2 = 32
    with pytest.raises(ValueError, match="multiples of 32"):
        adapter.check_geometry(121, 704, 1264)
    # The real VAE with that config encodes to the shape the adapter predicts.
    latents = adapter.encode_video(textured_frames(5, h=64, w=96))
    assert latents.shape == (48, *adapter.latent_shape(5, 64, 96)) == (48, 2, 4, 6)
    wan21 = load_adapter(index_dir(tmp_path, "Wan2.1", {"_class_name": "WanPipeline"}))
    assert (wan21.spatial_compression, wan21.latent_channels, wan21.height, wan21.num_frames) == (
        8,
        16,
        480,
        81,
    )


def test_wan22_two_expert_model_is_refused_with_the_reason(tmp_path):
    # As in Wan-AI/Wan2.2-T2V-A14B-Diffusers: a high-noise transformer, a low-noise transformer_2.
    a14b = {"_class_name": "WanPipeline", "boundary_ratio": 0.875, "transformer": ["diffusers", "WanTransformer3DModel"],
            "transformer_2": ["diffusers", "WanTransformer3DModel"]}  # fmt: skip
    with pytest.raises(
        UnsupportedModelError, match=r"transformer_2 below.*high-noise expert at every noise level"
    ):
        load_adapter(index_dir(tmp_path, "Wan2.2-T2V-A14B", a14b))
    with pytest.raises(UnsupportedModelError, match=r"one LoRA per expert"):
        load_adapter(index_dir(tmp_path, "Wan2.2-T2V-A14B-2", a14b))
    wan21 = {"_class_name": "WanPipeline", "boundary_ratio": None, "transformer_2": [None, None],
             "expand_timesteps": False}  # fmt: skip
    assert isinstance(load_adapter(index_dir(tmp_path, "Wan2.1-T2V-1.3B", wan21)), WanAdapter)


def test_a_name_containing_wan_is_not_enough(tmp_path):
    (tmp_path / "my-wan-finetune").mkdir()  # no model_index.json: no guessing from the name
    with pytest.raises(UnknownModelError, match=r"cannot read its model_index\.json"):
        load_adapter(str(tmp_path / "my-wan-finetune"))
    with pytest.raises(UnknownModelError, match="names no pipeline class"):
        load_adapter(
            index_dir(tmp_path, "wan-no-class", {"transformer": ["diffusers", "WanTransformer3DModel"]})
        )


def test_vae_identity_changes_with_the_model_config_without_loading_it(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"z_dim": 16}')
    (tmp_path / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    adapter = WanAdapter(str(tmp_path))
    first = adapter.identity("vae")
    (tmp_path / "vae" / "config.json").write_text('{"z_dim": 48}')
    assert adapter.identity("vae") != first
    assert adapter.identity("text") != adapter.identity("vae")
    assert "vae" not in adapter.__dict__  # nothing was loaded


@pytest.fixture
def lora_transformer(tiny_adapter):
    transformer = tiny_adapter.load_transformer()
    params = add_lora(transformer, 4, None, list(tiny_adapter.lora_targets), seed=0)
    with torch.no_grad():  # B starts at 0 (policy == reference); move it so they differ
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    return transformer, params


def test_add_lora_freezes_the_base_and_keeps_lora_in_float32(tiny_adapter):
    transformer = tiny_adapter.load_transformer(torch.bfloat16)
    params = add_lora(transformer, 4, 8, ["to_q", "to_v"], seed=0)
    names = [n for n, p in transformer.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and (".to_q." in n or ".to_v." in n) for n in names)
    assert all(p.dtype == torch.float32 for p in params)
    assert transformer.peft_config["default"].lora_alpha == 8


def test_reference_is_the_base_model_and_a_and_b_share_noise_and_t(tiny_adapter, lora_transformer):
    transformer, _ = lora_transformer
    base = tiny_adapter.load_transformer()
    gen = torch.Generator().manual_seed(0)
    lat_a, lat_b = torch.randn(2, 16, 9, 8, 8, generator=gen), torch.randn(2, 16, 9, 8, 8, generator=gen)
    text, noise, t = (
        torch.randn(2, 32, 32, generator=gen),
        torch.randn(2, 16, 9, 8, 8, generator=gen),
        torch.rand(2),
    )
    err_a, _err_b, ref_a, ref_b = flow_errors(tiny_adapter, transformer, lat_a, lat_b, text, noise, t)
    assert err_a.shape == (2, 9)

    def base_err(x0):
        noisy = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * noise  # the same noise and t
        with torch.no_grad():
            pred = tiny_adapter.predict_velocity(base, noisy, t, text)
        return (pred - (noise - x0)).pow(2).mean(dim=(1, 3, 4))

    assert torch.allclose(ref_a, base_err(lat_a), atol=1e-5)
    assert torch.allclose(ref_b, base_err(lat_b), atol=1e-5)
    assert not torch.allclose(err_a, ref_a, atol=1e-4)  # the LoRA is back on for the policy
    with lora_disabled(transformer):
        assert not any(m.merged for m in transformer.modules() if isinstance(m, BaseTunerLayer))
    assert all(p.requires_grad for n, p in transformer.named_parameters() if "lora_" in n)


def test_measure_step_time_reports_both_modes_on_the_same_batch():
    result = measure_step_time(steps=2, warmup_steps=1, batch_size=2)
    assert result["latent_shape"] == [2, 16, 9, 8, 8]
    assert set(result["modes"]) == {"dense", "vanilla"}
    for stats in result["modes"].values():
        assert stats["step_time_median_s"] > 0 and stats["peak_memory_bytes"] > 0
        assert stats["saved_activation_bytes"] > 0
    dense, vanilla = result["modes"]["dense"], result["modes"]["vanilla"]
    # the same two forwards: the activations saved for backward differ only by the tiny loss tensors
    assert (
        abs(dense["saved_activation_bytes"] - vanilla["saved_activation_bytes"])
        < 0.05 * vanilla["saved_activation_bytes"]
    )
    assert result["dense_over_vanilla"] > 0
