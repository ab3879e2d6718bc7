"""One DPO training step's math, shared by the training loop, evaluation and the step-time benchmark.

Rectified flow (docs/training.md): ``x_t = (1 - t) * x0 + t * noise`` with velocity target ``noise - x0``.
A and B of a pair get the same noise and the same ``t``, and go through the transformer as one
stacked batch ``[A; B]`` split with ``.chunk(2)`` (TRL style): one policy forward and one reference
forward (LoRA disabled, no gradient) per step, whatever the loss. The dense and the vanilla loss
differ only in how the per-latent-frame errors are reduced afterwards.

The noise level ``t`` of each pair is drawn by a ``TimestepSampler``: uniform, logit-normal or
shifted-uniform (``t = s*u / (1 + (s-1)*u)``, the shift of the model's flow-matching schedule). A
video model is trained with most of its steps at high noise (Wan: shift 5, P(t >= 0.5) = 5/6);
uniform t (P = 1/2) would spend far more of the DPO signal on low noise than the model ever saw.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import torch

from trainer.losses import Reduction, dense_dpo_loss, preference_metrics, vanilla_dpo_loss

if TYPE_CHECKING:
    from trainer.models import VideoModelAdapter

__all__ = [
    "LoraSwitch",
    "StepOutput",
    "TimestepSampler",
    "dpo_loss",
    "flow_errors",
    "lora_disabled",
    "pair_noise",
    "step_generator",
    "step_noise",
]

SamplingKind = Literal["uniform", "logit-normal", "shift"]


@dataclass(frozen=True)
class TimestepSampler:
    """Draws the flow-matching noise level ``t`` in (0, 1) of each pair.

    - ``uniform``: ``t ~ U(0, 1)``;
    - ``logit-normal``: ``t = sigmoid(z)``, ``z ~ N(0, 1)`` (SD3's training density), then shifted;
    - ``shift``: ``u ~ U(0, 1)`` then ``t = s*u / (1 + (s-1)*u)``, the map diffusers'
      ``FlowMatchEulerDiscreteScheduler(shift=s)`` applies to its sigmas.

    ``shift`` (s) > 1 moves mass to high noise; s = 1 leaves t unchanged.
    """

    kind: SamplingKind = "uniform"
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "logit-normal", "shift"):
            raise ValueError(f"timestep sampling must be uniform, logit-normal or shift, got {self.kind!r}")
        if not self.shift > 0:
            raise ValueError(f"timestep shift must be positive, got {self.shift}")
        if self.kind == "uniform" and self.shift != 1.0:
            raise ValueError("uniform timestep sampling takes no shift")

    @classmethod
    def resolve(
        cls, kind: str, shift: float | None, family_kind: SamplingKind, family_shift: float
    ) -> TimestepSampler:
        """The sampler for a config: ``kind="auto"`` is the model family's own (``family_kind`` with
        ``family_shift``); ``kind="wan480"`` is the Wan team's 480p training recipe, logit-normal with
        shift 2 (Wan2.1 issue #291); an unset shift is the family's for ``shift`` and 1 for
        ``logit-normal``."""
        if kind == "wan480":
            kind, shift = "logit-normal", 2.0 if shift is None else shift
        if kind == "auto":
            kind, shift = family_kind, family_shift if shift is None else shift
        if shift is None:
            shift = family_shift if kind == "shift" else 1.0
        return cls(cast(SamplingKind, kind), shift)  # checked in __post_init__

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.kind == "logit-normal":
            u = torch.sigmoid(torch.randn(n, generator=generator))
        else:
            u = torch.rand(n, generator=generator)
        if self.shift == 1.0:
            return u
        return self.shift * u / (1.0 + (self.shift - 1.0) * u)


def step_generator(seed: int, *counters: int) -> torch.Generator:
    """A generator seeded from (seed, step, micro-batch, rank...): the noise of a step depends only on
    where it is in the run, so a resumed run draws exactly what an uninterrupted one would."""
    digest = hashlib.sha256(":".join(map(str, (seed, *counters))).encode()).hexdigest()
    return torch.Generator().manual_seed(int(digest[:15], 16))


def step_noise(
    latent_shape: torch.Size | tuple[int, ...],
    generator: torch.Generator,
    sampler: TimestepSampler = TimestepSampler(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise [B, C, f, h, w], t [B] in (0, 1) from ``sampler``) for B pairs, drawn on the CPU."""
    t = sampler.sample(latent_shape[0], generator)
    noise = torch.randn(tuple(latent_shape), generator=generator)
    return noise, t


class LoraSwitch(Protocol):
    """A module with a peft LoRA that can be switched off (diffusers' ``PeftAdapterMixin``)."""

    def disable_adapters(self) -> None: ...

    def enable_adapters(self) -> None: ...


def pair_noise(
    pair_shape: torch.Size | tuple[int, ...],
    seed: int,
    keys: Sequence[tuple[int, ...]],
    sampler: TimestepSampler = TimestepSampler(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise [B, *pair_shape], t [B]) where pair k draws from ``step_generator(seed, *keys[k])`` alone:
    a pair's noise and t depend on its key (its place in the data stream), not on the batch or the
    process it lands in, so N processes with batch b draw what one process with batch N*b does."""
    draws = [step_noise((1, *pair_shape), step_generator(seed, *key), sampler) for key in keys]
    return torch.cat([d[0] for d in draws]), torch.cat([d[1] for d in draws])


@contextlib.contextmanager
def lora_disabled(model: LoraSwitch) -> Iterator[None]:
    """The frozen reference = the same weights with the LoRA switched off (no second copy)."""
    model.disable_adapters()
    try:
        yield
    finally:
        model.enable_adapters()


def _per_frame_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # [N, C, f, h, w] -> [N, f]: squared error averaged over channels and pixels, per latent frame.
    return (pred.float() - target.float()).pow(2).mean(dim=(1, 3, 4))


def flow_errors(
    adapter: VideoModelAdapter,
    model: torch.nn.Module,
    latents_a: torch.Tensor,
    latents_b: torch.Tensor,
    text: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    *,
    lora_owner: LoraSwitch | None = None,
    autocast: Any = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-latent-frame velocity errors ``[B, f]``: policy on A, policy on B, reference on A, on B.

    Both forwards call ``model``, which may be a DDP or FSDP wrapper: under FSDP only the wrapper
    gathers the sharded weights, so the reference forward must go through it too. The reference is
    ``model`` with the LoRA switched off on ``lora_owner``, the unwrapped module that holds the peft
    layers (default: ``model`` itself).
    """
    x0 = torch.cat([latents_a, latents_b])
    noise2, t2 = torch.cat([noise, noise]).to(x0), torch.cat([t, t]).to(x0.device)
    sigma = t2.view(-1, 1, 1, 1, 1).to(x0.dtype)
    noisy = (1.0 - sigma) * x0 + sigma * noise2
    target = noise2 - x0
    text2 = torch.cat([text, text])
    with autocast():
        pred = adapter.predict_velocity(model, noisy, t2, text2)
    owner = lora_owner if lora_owner is not None else cast(LoraSwitch, model)
    with torch.no_grad(), lora_disabled(owner), autocast():
        ref_pred = adapter.predict_velocity(model, noisy, t2, text2)
    err_a, err_b = _per_frame_mse(pred, target).chunk(2)
    ref_a, ref_b = _per_frame_mse(ref_pred, target).chunk(2)
    return err_a, err_b, ref_a, ref_b


@dataclass
class StepOutput:
    loss: torch.Tensor
    metrics: dict[str, float]


def dpo_loss(
    errors: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    batch: dict[str, Any],
    *,
    mode: str,
    beta: float,
    reduction: Reduction = "frame",
    denominator: float | None = None,
) -> StepOutput:
    """The dense (per latent frame) or vanilla (per pair, frames averaged first) DPO loss and its
    TRL-style metrics, from ``flow_errors`` and a batch's ``labels`` / ``segment_ids`` / ``video_label``.
    ``denominator``: the number of loss terms of the whole step (``losses.loss_terms``), which the sum
    of this batch's terms is divided by; default: their count in this batch (a mean)."""
    if mode == "dense":
        labels = batch["labels"].to(errors[0].device)
        segment_ids = batch["segment_ids"].to(errors[0].device)
        loss = dense_dpo_loss(
            *errors, labels, beta, segment_ids=segment_ids, reduction=reduction, denominator=denominator
        )
        return StepOutput(loss, preference_metrics(*errors, labels, beta))
    if mode == "vanilla":
        err_a, err_b, ref_a, ref_b = (e.mean(dim=1) for e in errors)  # frames averaged first
        labels = batch["video_label"].to(errors[0].device)
        loss = vanilla_dpo_loss(err_a, err_b, ref_a, ref_b, labels, beta, denominator)
        return StepOutput(loss, preference_metrics(err_a, err_b, ref_a, ref_b, labels, beta))
    raise ValueError(f"mode must be 'dense' or 'vanilla', got {mode!r}")
