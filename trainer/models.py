"""Model adapters: the one place that knows a diffusers video model family.

The trainer and the pair generator talk to a ``VideoModelAdapter``: load the parts, encode a clip to
normalized latents and back, embed prompts, predict the rectified-flow velocity ``noise - x0`` at a
noise level ``sigma`` in [0, 1], and save a LoRA in the family's diffusers format. ``WanAdapter``
implements it for ``WanTransformer3DModel`` + ``AutoencoderKLWan`` + UMT5 with one transformer: the
Wan2.1 T2V models (1.3B, 14B). Another family (CogVideoX, LTX-Video) plugs in as a subclass that
overrides the loaders and these few methods, and an entry in ``ADAPTERS``.

A model is matched to an adapter only by the pipeline class in its ``model_index.json``, never by
its name, and the adapter then checks the rest of the index (``check_model_index``). Wan2.2 TI2V-5B
runs: its VAE compresses 16x in space with 48 latent channels (read from ``vae/config.json``:
``scale_factor_spatial``, ``z_dim``), and its per-token timesteps (``expand_timesteps``) are all the
same t in text-to-video use (WanPipeline's mask is all ones without a conditioning image), so one t
per video is what the pipeline feeds it. Its clip presets are 704x1280, 121 frames, 24 fps. Wan2.2
A14B is refused: it is a mixture of two experts (``transformer`` for t >= ``boundary_ratio`` x 1000,
``transformer_2`` below), which needs one LoRA per expert and a choice of expert per step from the
shifted t; this adapter loads one transformer and would run the high-noise expert at every noise
level.

``model="tiny"`` builds a random-weight Wan from configs in code (about 70k parameters in all; no
download), seeded so that every process builds the same weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, cast

import numpy as np
import torch

from labeler.errors import DenseprefError

__all__ = [
    "ADAPTERS",
    "TINY_MODEL",
    "PeftHost",
    "UnknownModelError",
    "UnsupportedModelError",
    "VideoModelAdapter",
    "WanAdapter",
    "base_dtype",
    "load_adapter",
    "peft_host",
]

TINY_MODEL = "tiny"
TINY_VERSION = 1  # bump when the tiny configs change, so cached tiny latents are not reused


class UnknownModelError(DenseprefError, ValueError):
    """The model id/path names no family this trainer has an adapter for."""


class UnsupportedModelError(UnknownModelError):
    """A model of a known family in a variant its adapter cannot run correctly (e.g. Wan2.2 A14B)."""


class PeftHost(Protocol):
    """What the trainer calls on a transformer besides ``torch.nn.Module``: diffusers' ``ModelMixin``
    and ``PeftAdapterMixin`` methods (declared here, since diffusers' own classes do not type-check)."""

    peft_config: dict[str, Any]

    def add_adapter(self, adapter_config: Any, adapter_name: str = "default") -> None: ...

    def disable_adapters(self) -> None: ...

    def enable_adapters(self) -> None: ...

    def enable_gradient_checkpointing(self) -> None: ...


def peft_host(module: torch.nn.Module) -> PeftHost:
    """``module`` (a diffusers transformer) as the ``PeftHost`` it is."""
    return cast(PeftHost, module)


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class VideoModelAdapter:
    """Base class; subclasses fill in the class attributes and the methods that raise."""

    family: ClassVar[str] = ""
    lora_targets: ClassVar[tuple[str, ...]] = ()
    temporal_compression: int = 4
    spatial_compression: int = 8
    patch_size: ClassVar[tuple[int, int, int]] = (1, 2, 2)  # (t, h, w) of the transformer's patches
    latent_channels: int = 16
    text_shape: tuple[int, int] = (512, 4096)  # (tokens, width) of the prompt embeddings
    # Clip geometry the model was trained for: pairs are generated at it and training defaults to it.
    height: int = 480
    width: int = 832
    num_frames: int = 81
    fps: float = 16.0
    flow_shift: float = 3.0  # timestep shift of the sampling schedule
    # How training draws t when --timestep-sampling is auto: the density the family was trained with.
    train_timestep_sampling: ClassVar[Literal["uniform", "logit-normal", "shift"]] = "uniform"
    train_timestep_shift: ClassVar[float] = 1.0
    num_inference_steps: int = 50  # WanPipeline's T2V default (40 is the Wan repo's I2V sample_steps)
    guidance_scale: float = 5.0  # classifier-free guidance of pair generation
    subfolders: ClassVar[dict[str, str]] = {
        "vae": "vae",
        "text": "text_encoder",
        "transformer": "transformer",
    }

    def __init__(self, model: str, *, device: str | torch.device = "cpu", tiny_seed: int = 0):
        self.model = model
        self.device = torch.device(device)
        # Only the tiny model uses it: its random weights come from this seed, kept apart from the
        # training seed so that pair generation and training see the same base model.
        self.tiny_seed = tiny_seed

    @property
    def is_tiny(self) -> bool:
        return self.model == TINY_MODEL

    @classmethod
    def check_model_index(cls, model: str, index: dict[str, Any]) -> None:
        """Raise ``UnsupportedModelError`` for a variant of the family this adapter cannot run."""

    @classmethod
    def lora_pipeline(cls) -> Any:
        """The diffusers pipeline class whose ``save_lora_weights`` / ``load_lora_weights`` format
        ``save_lora`` writes."""
        raise NotImplementedError

    # ---- loading (cached; release() frees the encoders once latents and embeddings are cached)
    def load_transformer(self, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        raise NotImplementedError

    @cached_property
    def vae(self) -> torch.nn.Module:
        raise NotImplementedError

    @cached_property
    def text_encoder(self) -> tuple[Any, torch.nn.Module]:
        """(tokenizer, encoder)."""
        raise NotImplementedError

    @cached_property
    def scheduler(self) -> Any:
        """A FlowMatchEulerDiscreteScheduler with the model's shift."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(shift=self.flow_shift)

    def release(self, *, keep_vae: bool = False) -> None:
        """Drop the text encoder and, unless ``keep_vae`` (validation videos decode with it), the VAE:
        on a GPU they hold memory training needs."""
        for name in ("text_encoder",) if keep_vae else ("vae", "text_encoder"):
            self.__dict__.pop(name, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def identity(self, part: str) -> str:
        """What a cached latent ("vae") or embedding ("text") depends on besides its input: the model,
        the part's config file when the model is a local directory, and the adapter's settings. It
        loads nothing, so a run whose tensors are all cached never loads the VAE or text encoder."""
        config = Path(self.model) / self.subfolders.get(part, part) / "config.json"
        return _fingerprint(
            {
                "family": self.family,
                "model": self.model,
                "part": part,
                "tiny": (TINY_VERSION, self.tiny_seed) if self.is_tiny else None,
                "config": config.read_text() if config.is_file() else None,
                "settings": self.identity_settings(part),
            }
        )

    def identity_settings(self, part: str) -> dict[str, Any]:
        return {}

    # ---- the model-specific operations
    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        """[F, H, W, 3] uint8 RGB -> normalized latents [C, f, h, w] (float32, CPU)."""
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Normalized latents [B, C, f, h, w] -> [B, F, H, W, 3] uint8 RGB."""
        raise NotImplementedError

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings [B, L, D] (float32, CPU) as the transformer consumes them."""
        raise NotImplementedError

    def predict_velocity(
        self,
        transformer: torch.nn.Module,
        noisy: torch.Tensor,
        sigmas: torch.Tensor,
        text_embeds: torch.Tensor,
    ) -> torch.Tensor:
        """The model's estimate of ``noise - x0`` for ``noisy = (1 - sigma) * x0 + sigma * noise``."""
        raise NotImplementedError

    def save_lora(
        self,
        transformer: torch.nn.Module,
        directory: str | os.PathLike,
        *,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write the LoRA as ``pytorch_lora_weights.safetensors``, loadable with the family's
        ``pipe.load_lora_weights(directory)``. ``state_dict``: the transformer's weights gathered by
        the caller when its own are sharded (FSDP); default: read from ``transformer``."""
        from peft.utils import get_peft_model_state_dict

        config = peft_host(transformer).peft_config["default"]
        meta = {
            "r": config.r,
            "lora_alpha": config.lora_alpha,
            "target_modules": sorted(config.target_modules),
        }
        self.lora_pipeline().save_lora_weights(
            str(directory),
            transformer_lora_layers=get_peft_model_state_dict(transformer, state_dict=state_dict or None),
            transformer_lora_adapter_metadata=meta,
        )
        return Path(directory)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        return (
            1 + (num_frames - 1) // self.temporal_compression,
            height // self.spatial_compression,
            width // self.spatial_compression,
        )

    def check_geometry(self, num_frames: int, height: int, width: int) -> None:
        r, s = self.temporal_compression, self.spatial_compression * self.patch_size[1]
        if (num_frames - 1) % r:
            raise ValueError(f"{self.family}: num_frames must be 1 + k*{r}, got {num_frames}")
        if height % s or width % s:
            raise ValueError(
                f"{self.family}: height and width must be multiples of {s}, got {height}x{width}"
            )


class WanAdapter(VideoModelAdapter):
    """Wan2.1 / Wan2.2 text-to-video: WanTransformer3DModel, AutoencoderKLWan, UMT5 (diffusers layout)."""

    family = "wan"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    max_sequence_length = 512
    # Wan is trained on shifted-uniform t with shift 5 (the Wan repo's sample_shift for T2V, and the
    # FlowMatchScheduler(shift=5) of DiffSynth-Studio's Wan training): P(t >= 0.5) = 5/6.
    train_timestep_sampling = "shift"
    train_timestep_shift = 5.0

    @classmethod
    def check_model_index(cls, model: str, index: dict[str, Any]) -> None:
        two_experts = index.get("boundary_ratio") is not None or (index.get("transformer_2") or [None])[0]
        if two_experts:
            raise UnsupportedModelError(
                f"{model}: a Wan2.2 mixture-of-experts model (transformer for t >= boundary_ratio "
                f"{index.get('boundary_ratio')} x 1000, transformer_2 below). Not built: training it needs one LoRA "
                "per expert, each step's expert chosen from its shifted t (the same on every process), the idle "
                "expert offloaded, and pair generation switching experts at the boundary; this adapter loads one "
                "transformer and would use the high-noise expert at every noise level. Use a Wan2.1 T2V model or "
                "Wan2.2 TI2V-5B."
            )

    @classmethod
    def lora_pipeline(cls) -> Any:
        from diffusers import WanPipeline

        return WanPipeline

    def __init__(self, model: str, *, device: str | torch.device = "cpu", tiny_seed: int = 0):
        super().__init__(model, device=device, tiny_seed=tiny_seed)
        if self.is_tiny:  # small enough that 33 frames x 64x64 trains in a fraction of a second
            self.height, self.width, self.num_frames, self.fps = 64, 64, 33, 8.0
            self.num_inference_steps, self.max_sequence_length, self.guidance_scale = 20, 32, 1.0
            self.text_shape = (32, 32)
            return
        # The VAE's compression and channels come from its config (Wan2.1: 8x, 16 channels; Wan2.2's
        # VAE: 16x, 48 channels), read without loading weights.
        vae = _read_json(model, "vae/config.json")
        self.spatial_compression = int(vae.get("scale_factor_spatial") or 8)
        self.temporal_compression = int(vae.get("scale_factor_temporal") or 4)
        self.latent_channels = int(vae.get("z_dim", 16))
        if _read_json(model, "model_index.json").get("expand_timesteps"):  # Wan2.2 TI2V-5B's presets
            self.height, self.width, self.num_frames, self.fps = 704, 1280, 121, 24.0

    def load_transformer(self, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        from diffusers import WanTransformer3DModel

        model: Any  # diffusers' model classes do not type-check as torch.nn.Module
        if self.is_tiny:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.tiny_seed)
                model = WanTransformer3DModel(
                    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                    out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
                )  # fmt: skip
            if dtype != torch.float32:
                model = model.to(dtype)
        else:  # from_pretrained keeps the modules Wan wants in float32 (norms, time embedder) there
            model = WanTransformer3DModel.from_pretrained(
                self.model, subfolder="transformer", torch_dtype=dtype
            )
        return cast(torch.nn.Module, model.to(self.device))

    @cached_property
    def vae(self) -> torch.nn.Module:
        from diffusers import AutoencoderKLWan

        if self.is_tiny:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.tiny_seed + 1)
                vae = AutoencoderKLWan(
                    base_dim=3,
                    z_dim=16,
                    dim_mult=[1, 1, 1, 1],
                    num_res_blocks=1,
                    temperal_downsample=[False, True, True],
                )
        else:  # the Wan VAE is run in float32, as the Wan pipelines do
            vae = AutoencoderKLWan.from_pretrained(self.model, subfolder="vae", torch_dtype=torch.float32)
        return cast(torch.nn.Module, vae).to(self.device).eval().requires_grad_(False)

    @cached_property
    def text_encoder(self) -> tuple[Any, torch.nn.Module]:
        from transformers import AutoTokenizer, ByT5Tokenizer, UMT5Config, UMT5EncoderModel

        tokenizer: Any
        if self.is_tiny:  # a byte-level tokenizer needs no vocabulary file
            tokenizer = ByT5Tokenizer()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.tiny_seed + 2)
                encoder = UMT5EncoderModel(
                    UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                               relative_attention_num_buckets=8)
                )  # fmt: skip
        else:
            tokenizer = AutoTokenizer.from_pretrained(self.model, subfolder="tokenizer")
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            encoder = UMT5EncoderModel.from_pretrained(self.model, subfolder="text_encoder", dtype=dtype)
        return tokenizer, cast(torch.nn.Module, encoder).to(self.device).eval().requires_grad_(False)

    @cached_property
    def scheduler(self) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        if not self.is_tiny:
            # The Wan repos ship UniPC with `flow_shift`; the guided Euler sampler uses the same shift.
            config = FlowMatchEulerDiscreteScheduler.load_config(self.model, subfolder="scheduler")
            self.flow_shift = float(config.get("flow_shift") or config.get("shift") or self.flow_shift)
        return FlowMatchEulerDiscreteScheduler(shift=self.flow_shift)

    def identity_settings(self, part: str) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length} if part == "text" else {}

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg: Any = self.vae.config  # diffusers' FrozenDict of the VAE's config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(like)
        std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(like)
        return mean, std

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float()
        video = (video / 127.5 - 1.0).to(self.device)
        # The distribution's mode, not a sample: cached latents must not depend on a random draw.
        vae: Any = self.vae  # AutoencoderKLWan: its encode / decode are not on torch.nn.Module
        latents = vae.encode(video).latent_dist.mode()
        mean, std = self._latent_stats(latents)
        return ((latents - mean) / std)[0].float().cpu()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        latents = latents.to(self.device, torch.float32)
        mean, std = self._latent_stats(latents)
        vae: Any = self.vae
        video = vae.decode(latents * std + mean).sample  # [B, 3, F, H, W] in [-1, 1]
        video = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(0, 2, 3, 4, 1).cpu().numpy()

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tokenizer, encoder = self.text_encoder
        prompts = [" ".join(p.split()) for p in prompts]
        tokens = tokenizer(
            prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )  # fmt: skip
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        hidden = encoder(ids, mask).last_hidden_state.float()
        # As WanPipeline: keep the real tokens' states and zero the padding positions.
        return (hidden * mask[..., None]).cpu()

    def predict_velocity(
        self,
        transformer: torch.nn.Module,
        noisy: torch.Tensor,
        sigmas: torch.Tensor,
        text_embeds: torch.Tensor,
    ) -> torch.Tensor:
        # Wan's timestep is sigma * num_train_timesteps (1000), and its output is the flow velocity.
        dtype = base_dtype(transformer)
        return transformer(
            hidden_states=noisy.to(dtype),
            timestep=sigmas.to(noisy.device, torch.float32) * 1000.0,
            encoder_hidden_states=text_embeds.to(noisy.device, dtype),
            return_dict=False,
        )[0].float()


def base_dtype(module: torch.nn.Module) -> torch.dtype:
    """dtype of the frozen base weights (LoRA weights may be kept in float32 beside bf16 ones)."""
    params = list(module.parameters())
    return next((p.dtype for p in params if not p.requires_grad), params[0].dtype)


#: Adapters by the diffusers pipeline class named in a model's model_index.json.
ADAPTERS: dict[str, type[VideoModelAdapter]] = {"WanPipeline": WanAdapter}


def _read_json(model: str, name: str) -> dict[str, Any]:
    """A JSON file of the model (``model_index.json``, ``vae/config.json``): from a local directory, or
    the Hub / its local cache."""
    local = Path(model) / name
    try:
        if local.is_file():
            data = json.loads(local.read_text())
        else:
            from huggingface_hub import hf_hub_download

            data = json.loads(Path(hf_hub_download(model, name)).read_text())
    except Exception as exc:  # offline, gated, missing, or not JSON: say so, never guess from the name
        raise UnknownModelError(
            f"{model}: cannot read its {name} ({type(exc).__name__}: {exc}); give a local diffusers "
            "directory or a Hub id that can be downloaded"
        ) from exc
    if not isinstance(data, dict):
        raise UnknownModelError(f"{model}: {name} is not a JSON object")
    return data


def _model_index(model: str) -> dict[str, Any]:
    """The model's ``model_index.json``."""
    index = _read_json(model, "model_index.json")
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise UnknownModelError(f"{model}: model_index.json names no pipeline class (_class_name)")
    return index


def load_adapter(model: str, *, device: str | torch.device = "cpu", tiny_seed: int = 0) -> VideoModelAdapter:
    """The adapter for a model id / local path, chosen by the pipeline class of its model_index.json
    (and refused when the adapter cannot run that variant), or the tiny Wan."""
    if model == TINY_MODEL:
        return WanAdapter(model, device=device, tiny_seed=tiny_seed)
    index = _model_index(model)
    name = index["_class_name"]
    if name not in ADAPTERS:
        raise UnknownModelError(
            f"{model}: no adapter for pipeline {name}; supported: {', '.join(ADAPTERS)} or 'tiny'"
        )
    adapter_class = ADAPTERS[name]
    adapter_class.check_model_index(model, index)
    return adapter_class(model, device=device, tiny_seed=tiny_seed)
