"""DenseDPO and vanilla (Diffusion/Flow-)DPO losses as small pure functions (docs/training.md).

Inputs are flow-matching errors: ``model_err_X`` is the policy's squared velocity error on video
X (A or B), ``ref_err_X`` the frozen reference's, both already averaged over channels and pixels.
``d_X = model_err_X - ref_err_X``; a lower error than the reference means the policy likes X more,
so the implicit reward of X is ``r_X = -0.5 * beta * d_X`` and every loss is
``-logsigmoid(l * (r_A - r_B)) = -logsigmoid(-0.5 * beta * l * (d_A - d_B))`` with label
``l`` = +1 (A better), -1 (B better), 0 (tie or masked: no term).

- ``dense_dpo_loss(..., reduction="frame")``: one term per labeled latent frame, averaged over
  every labeled (pair, frame) of the batch (the DenseDPO paper's Appendix E form).
- ``dense_dpo_loss(..., reduction="segment")``: ``d_X`` averaged over each segment's labeled latent
  frames first, one term per (pair, segment) (Eq. 7 applied per segment).
- ``vanilla_dpo_loss``: one term per pair with the video label; tie pairs dropped (Eq. 5).

A batch without any non-zero label gives a zero loss that still hangs off the inputs' graph (so
``backward()`` works and all gradients are zero), never NaN.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "Reduction",
    "dense_dpo_loss",
    "implicit_rewards",
    "loss_terms",
    "preference_metrics",
    "vanilla_dpo_loss",
]

Reduction = Literal["frame", "segment"]


def _check_shapes(tensors: dict[str, torch.Tensor], ndim: int) -> None:
    shape = tensors["model_err_a"].shape
    for name, t in tensors.items():
        if t.dim() != ndim:
            raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
        if t.shape != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, model_err_a has {tuple(shape)}")


def _check_labels(labels: torch.Tensor) -> None:
    bad = ~((labels == 1) | (labels == -1) | (labels == 0))
    if bad.any():
        raise ValueError(f"labels must be +1, -1 or 0, got {labels[bad].unique().tolist()}")


def _masked_mean(terms: torch.Tensor, mask: torch.Tensor, denominator: float | None = None) -> torch.Tensor:
    """Sum of the unmasked terms over their count, or over ``denominator`` when given (the count of
    terms in the whole optimizer step, over every micro-batch and process: see ``loss_terms``)."""
    # where() and not multiply: a masked term that is inf or NaN must not leak into the sum.
    kept = torch.where(mask, terms, torch.zeros_like(terms))
    if denominator is not None:
        return kept.sum() / max(denominator, 1.0)
    return kept.sum() / mask.sum().clamp(min=1)


def _differences(
    model_err_a: torch.Tensor,
    model_err_b: torch.Tensor,
    ref_err_a: torch.Tensor,
    ref_err_b: torch.Tensor,
    labels: torch.Tensor,
    *,
    ndim: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked inputs -> (d_a, d_b, labels as floats), d_X = policy error - reference error."""
    errs = {
        "model_err_a": model_err_a,
        "model_err_b": model_err_b,
        "ref_err_a": ref_err_a,
        "ref_err_b": ref_err_b,
    }
    _check_shapes({**errs, "labels": labels}, ndim)
    _check_labels(labels)
    return model_err_a - ref_err_a, model_err_b - ref_err_b, labels.to(model_err_a.dtype)


def _dpo_terms(d_a: torch.Tensor, d_b: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    return -F.logsigmoid(-0.5 * beta * labels * (d_a - d_b))


def dense_dpo_loss(
    model_err_a: torch.Tensor,
    model_err_b: torch.Tensor,
    ref_err_a: torch.Tensor,
    ref_err_b: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    segment_ids: torch.Tensor | None = None,
    reduction: Reduction = "frame",
    denominator: float | None = None,
) -> torch.Tensor:
    """DenseDPO loss over ``[batch, latent_frames]`` errors and per-frame labels in {+1, -1, 0}.

    ``reduction="segment"`` needs ``segment_ids`` (``[batch, latent_frames]`` ints, the segment each
    latent frame lies in; negative = in no single segment). Within a pair all labeled frames of a
    segment must carry the same label. ``denominator``: divide the sum of the terms by it instead of
    by their count in this batch (``loss_terms`` counts them over a whole optimizer step).
    """
    d_a, d_b, labels = _differences(model_err_a, model_err_b, ref_err_a, ref_err_b, labels, ndim=2)
    if reduction == "frame":
        return _masked_mean(_dpo_terms(d_a, d_b, labels, beta), labels != 0, denominator)
    if reduction != "segment":
        raise ValueError(f"reduction must be 'frame' or 'segment', got {reduction!r}")
    if segment_ids is None:
        raise ValueError("reduction='segment' needs segment_ids")
    if segment_ids.shape != labels.shape:
        raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)}, labels {tuple(labels.shape)}")
    seg_d_a, seg_d_b, seg_labels, seg_mask = _segment_means(d_a, d_b, labels, segment_ids.long())
    return _masked_mean(_dpo_terms(seg_d_a, seg_d_b, seg_labels, beta), seg_mask, denominator)


def _segment_means(
    d_a: torch.Tensor, d_b: torch.Tensor, labels: torch.Tensor, segment_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (pair, segment): mean d_A, mean d_B and the label over the segment's labeled frames, as
    ``[batch, num_segments]`` tensors, plus the mask of segments that have any labeled frame."""
    batch = d_a.shape[0]
    used = (labels != 0) & (segment_ids >= 0)
    num_segments = int(segment_ids.max().clamp(min=0).item()) + 1
    slot = torch.where(used, segment_ids, torch.full_like(segment_ids, num_segments))  # extra slot = unused
    flat = (slot + torch.arange(batch, device=slot.device)[:, None] * (num_segments + 1)).flatten()
    size = batch * (num_segments + 1)

    def seg_sum(values: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros(size, dtype=values.dtype, device=values.device)
        return zero.index_add(0, flat, values.flatten()).view(batch, num_segments + 1)[:, :num_segments]

    weight = used.to(d_a.dtype)
    count = seg_sum(weight)
    label_sum = seg_sum(labels * weight)
    mask = count > 0
    if not torch.equal(label_sum.abs(), count):
        raise ValueError("labels differ between latent frames of the same segment")
    denom = count.clamp(min=1)
    mean_a = seg_sum(torch.where(used, d_a, torch.zeros_like(d_a))) / denom
    mean_b = seg_sum(torch.where(used, d_b, torch.zeros_like(d_b))) / denom
    return mean_a, mean_b, label_sum / denom, mask


def vanilla_dpo_loss(
    model_err_a: torch.Tensor,
    model_err_b: torch.Tensor,
    ref_err_a: torch.Tensor,
    ref_err_b: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    denominator: float | None = None,
) -> torch.Tensor:
    """Video-level DPO over ``[batch]`` errors (already averaged over all latent frames) and video
    labels in {+1, -1, 0}; tie pairs contribute nothing."""
    d_a, d_b, labels = _differences(model_err_a, model_err_b, ref_err_a, ref_err_b, labels, ndim=1)
    terms = _dpo_terms(d_a, d_b, labels, beta)
    return _masked_mean(terms, labels != 0, denominator)


def loss_terms(
    labels: list[int], segment_ids: list[int], video_label: int, *, mode: str, reduction: Reduction
) -> int:
    """How many terms one pair adds to the loss: labeled latent frames (dense, ``frame``), labeled
    segments holding a whole latent frame (dense, ``segment``), or 1 for a non-tie pair (vanilla).

    Read from the labels alone, so every process can count the terms of a whole optimizer step (all
    its micro-batches, all processes) from the step's deterministic data positions, and divide its
    own terms' sum by that count: the loss and gradient then do not depend on how the step is split
    over processes and micro-batches (a mean per micro-batch, then averaged, would weight each pair
    equally instead of each term)."""
    if mode == "vanilla":
        return int(video_label != 0)
    if mode != "dense":
        raise ValueError(f"mode must be 'dense' or 'vanilla', got {mode!r}")
    if reduction == "frame":
        return sum(label != 0 for label in labels)
    return len({seg for label, seg in zip(labels, segment_ids, strict=True) if label != 0 and seg >= 0})


def implicit_rewards(model_err: torch.Tensor, ref_err: torch.Tensor, beta: float) -> torch.Tensor:
    """``r = -0.5 * beta * (model_err - ref_err)``: positive when the policy fits a video better than
    the reference does."""
    return -0.5 * beta * (model_err - ref_err)


@torch.no_grad()
def preference_metrics(
    model_err_a: torch.Tensor,
    model_err_b: torch.Tensor,
    ref_err_a: torch.Tensor,
    ref_err_b: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
) -> dict[str, float]:
    """TRL-style metrics over the labeled entries (frames for dense, pairs for vanilla; any shape):

    - ``implicit_acc``: share where the preferred side's implicit reward is strictly higher;
    - ``reward_margin``: mean of ``r_preferred - r_other``;
    - ``rewards_chosen`` / ``rewards_rejected``: mean implicit reward of each side;
    - ``labeled``: how many entries were labeled (all metrics are 0 when none is).
    """
    mask = labels != 0
    n = int(mask.sum())
    if n == 0:
        return {
            "implicit_acc": 0.0,
            "reward_margin": 0.0,
            "rewards_chosen": 0.0,
            "rewards_rejected": 0.0,
            "labeled": 0,
        }
    r_a = implicit_rewards(model_err_a, ref_err_a, beta)[mask].float()
    r_b = implicit_rewards(model_err_b, ref_err_b, beta)[mask].float()
    a_wins = labels[mask] > 0
    chosen, rejected = torch.where(a_wins, r_a, r_b), torch.where(a_wins, r_b, r_a)
    return {
        "implicit_acc": (chosen > rejected).float().mean().item(),
        "reward_margin": (chosen - rejected).mean().item(),
        "rewards_chosen": chosen.mean().item(),
        "rewards_rejected": rejected.mean().item(),
        "labeled": n,
    }
