"""One DPO training step's math, shared by the training loop, evaluation and the step-time benchmark.

Rectified flow (DESIGN §2.7): ``x_t = (1 - t) * x0 + t * noise`` with velocity target ``noise - x0``.
A and B of a pair get the same noise and the same ``t``, and go through the transformer as one
stacked batch ``[A; B]`` split with ``.chunk(2)`` (TRL style): one policy forward and one reference
forward (LoRA disabled, no gradient) per step, whatever the loss. The dense and the vanilla loss
differ only in how the per-latent-frame errors are reduced afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from trainer.losses import dense_dpo_loss, preference_metrics, vanilla_dpo_loss

if TYPE_CHECKING:
    from trainer.models import VideoModelAdapter

__all__ = ["StepOutput", "dpo_loss", "flow_errors", "lora_disabled", "step_generator", "step_noise"]


def step_generator(seed: int, *counters: int) -> torch.Generator:
    """A generator seeded from (seed, step, micro-batch, rank...): the noise of a step depends only on
    where it is in the run, so a resumed run draws exactly what an uninterrupted one would."""
    digest = hashlib.sha256(":".join(map(str, (seed, *counters))).encode()).hexdigest()
    return torch.Generator().manual_seed(int(digest[:15], 16))


def step_noise(
    latent_shape: torch.Size | tuple[int, ...], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise [B, C, f, h, w], t [B] uniform in (0, 1)) for B pairs, drawn on the CPU."""
    t = torch.rand(latent_shape[0], generator=generator)
    noise = torch.randn(tuple(latent_shape), generator=generator)
    return noise, t


@contextlib.contextmanager
def lora_disabled(model: torch.nn.Module) -> Iterator[None]:
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
    reference_model: torch.nn.Module | None = None,
    autocast: Any = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-latent-frame velocity errors ``[B, f]``: policy on A, policy on B, reference on A, on B.

    ``model`` is what the policy forward calls (it may be a DDP wrapper); ``reference_model`` is the
    unwrapped module whose LoRA is switched off for the reference forward (default: ``model``).
    """
    x0 = torch.cat([latents_a, latents_b])
    noise2, t2 = torch.cat([noise, noise]).to(x0), torch.cat([t, t]).to(x0.device)
    sigma = t2.view(-1, 1, 1, 1, 1).to(x0.dtype)
    noisy = (1.0 - sigma) * x0 + sigma * noise2
    target = noise2 - x0
    text2 = torch.cat([text, text])
    with autocast():
        pred = adapter.predict_velocity(model, noisy, t2, text2)
    reference_model = reference_model if reference_model is not None else model
    with torch.no_grad(), lora_disabled(reference_model), autocast():
        ref_pred = adapter.predict_velocity(reference_model, noisy, t2, text2)
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
    reduction: str = "frame",
) -> StepOutput:
    """The dense (per latent frame) or vanilla (per pair, frames averaged first) DPO loss and its
    TRL-style metrics, from ``flow_errors`` and a batch's ``labels`` / ``segment_ids`` / ``video_label``."""
    if mode == "dense":
        labels = batch["labels"].to(errors[0].device)
        segment_ids = batch["segment_ids"].to(errors[0].device)
        loss = dense_dpo_loss(*errors, labels, beta, segment_ids=segment_ids, reduction=reduction)  # type: ignore[arg-type]
        return StepOutput(loss, preference_metrics(*errors, labels, beta))
    if mode == "vanilla":
        pair_errors = tuple(e.mean(dim=1) for e in errors)
        labels = batch["video_label"].to(errors[0].device)
        loss = vanilla_dpo_loss(*pair_errors, labels, beta)
        return StepOutput(loss, preference_metrics(*pair_errors, labels, beta))
    raise ValueError(f"mode must be 'dense' or 'vanilla', got {mode!r}")
