"""DenseDPO / vanilla DPO losses against hand computations and their invariants (docs/training.md)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.losses import dense_dpo_loss, loss_terms, preference_metrics, vanilla_dpo_loss


def neg_logsigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# One pair, three latent frames. d_A = model - ref, d_B likewise:
#   d_A = [-0.02, 0.00, 0.05], d_B = [0.05, 0.00, -0.01]
ERR_A, REF_A = t([[0.10, 0.20, 0.30]]), t([[0.12, 0.20, 0.25]])
ERR_B, REF_B = t([[0.15, 0.10, 0.30]]), t([[0.10, 0.10, 0.31]])


def test_frame_reduction_matches_hand_computation():
    beta = 10.0
    loss = dense_dpo_loss(ERR_A, ERR_B, REF_A, REF_B, t([[1, 0, -1]]), beta)
    # frame 0 (A better): -logsigmoid(-0.5*10*(+1)*(-0.02 - 0.05)) = -logsigmoid(0.35)
    # frame 2 (B better): -logsigmoid(-0.5*10*(-1)*(0.05 - -0.01)) = -logsigmoid(0.30)
    expected = (neg_logsigmoid(0.35) + neg_logsigmoid(0.30)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_frame_reduction_averages_over_all_labeled_frames_of_the_batch():
    beta = 500.0
    err_a, ref_a = t([[0.1000, 0.1000], [0.2000, 0.2000]]), t([[0.1001, 0.1000], [0.2000, 0.1998]])
    err_b, ref_b = t([[0.1000, 0.1000], [0.2000, 0.2000]]), t([[0.1000, 0.1000], [0.2000, 0.2000]])
    labels = t([[1, 0], [0, -1]])
    # pair 0 frame 0: d_A = -1e-4, d_B = 0 -> x = -250 * (+1) * (-1e-4) = 0.025
    # pair 1 frame 1: d_A = +2e-4, d_B = 0 -> x = -250 * (-1) * (2e-4) = 0.05
    expected = (neg_logsigmoid(0.025) + neg_logsigmoid(0.05)) / 2
    loss = dense_dpo_loss(err_a, err_b, ref_a, ref_b, labels, beta)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("reduction", ["frame", "segment"])
def test_summing_split_batches_over_the_whole_count_gives_the_whole_batch_loss(reduction):
    # Pair 0 has 1 labeled frame, pair 1 has 3: a mean per pair, averaged, weights them equally.
    err_a, ref_a = t([[0.3, 0.1, 0.2], [0.2, 0.4, 0.1]]), t([[0.1, 0.1, 0.2], [0.1, 0.2, 0.1]])
    err_b, ref_b = t([[0.1, 0.1, 0.2], [0.3, 0.1, 0.1]]), t([[0.2, 0.1, 0.1], [0.1, 0.1, 0.3]])
    labels, seg = t([[1, 0, 0], [-1, -1, 1]]), torch.tensor([[0, 1, 1], [0, 0, 1]])
    rows = [(labels[i].long().tolist(), seg[i].tolist()) for i in range(2)]
    counts = [loss_terms(lab, sid, 1, mode="dense", reduction=reduction) for lab, sid in rows]
    assert counts == ([1, 3] if reduction == "frame" else [1, 2])
    whole = dense_dpo_loss(err_a, err_b, ref_a, ref_b, labels, 10.0, seg, reduction)

    def part(i: int, denominator: float | None) -> torch.Tensor:
        one = slice(i, i + 1)
        return dense_dpo_loss(err_a[one], err_b[one], ref_a[one], ref_b[one], labels[one], 10.0, seg[one],
                              reduction, denominator)  # fmt: skip

    assert (part(0, sum(counts)) + part(1, sum(counts))).item() == pytest.approx(whole.item(), rel=1e-12)
    assert ((part(0, None) + part(1, None)) / 2).item() != pytest.approx(whole.item(), rel=1e-3)


def test_loss_terms_of_vanilla_count_non_tie_pairs():
    assert loss_terms([1, 1], [0, 0], 1, mode="vanilla", reduction="frame") == 1
    assert loss_terms([1, -1], [0, 1], 0, mode="vanilla", reduction="frame") == 0
    assert loss_terms([0, 0], [0, -1], 0, mode="dense", reduction="segment") == 0


def test_segment_reduction_matches_hand_computation():
    beta = 10.0
    err_a = t([[0.10, 0.30, 0.20, 0.40]])
    ref_a = t([[0.10, 0.10, 0.20, 0.20]])  # d_A = [0, 0.2, 0, 0.2]
    err_b = t([[0.20, 0.20, 0.10, 0.10]])
    ref_b = t([[0.10, 0.10, 0.10, 0.20]])  # d_B = [0.1, 0.1, 0, -0.1]
    labels = t([[1, 1, -1, -1]])
    segment_ids = torch.tensor([[0, 0, 1, 1]])
    # segment 0: mean d_A = 0.1, mean d_B = 0.1 -> x = 0 -> log 2
    # segment 1: mean d_A = 0.1, mean d_B = -0.05 -> x = -5 * (-1) * 0.15 = 0.75
    expected = (math.log(2) + neg_logsigmoid(0.75)) / 2
    loss = dense_dpo_loss(
        err_a, err_b, ref_a, ref_b, labels, beta, segment_ids=segment_ids, reduction="segment"
    )
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_segment_reduction_skips_masked_and_straddling_frames():
    beta = 10.0
    zero = t([[0.0, 0.0, 0.0, 0.0]])
    err_a = t([[0.3, 9.0, 0.1, 7.0]])  # frames 1 and 3 must not count
    labels = t([[1, 1, 1, 0]])
    segment_ids = torch.tensor([[0, -1, 0, 0]])  # frame 1 straddles, frame 3 is a tie
    # segment 0 uses frames 0 and 2: mean d_A = 0.2, d_B = 0 -> x = -5 * 0.2 = -1
    loss = dense_dpo_loss(err_a, zero, zero, zero, labels, beta, segment_ids=segment_ids, reduction="segment")
    assert loss.item() == pytest.approx(neg_logsigmoid(-1.0), rel=1e-12)


def test_vanilla_matches_hand_computation_and_drops_ties():
    beta = 10.0
    err_a, ref_a = t([0.10, 0.50, 0.20]), t([0.12, 0.00, 0.25])  # d_A = [-0.02, 0.5, -0.05]
    err_b, ref_b = t([0.15, 0.50, 0.30]), t([0.10, 0.00, 0.31])  # d_B = [0.05, 0.5, -0.01]
    labels = t([1, 0, -1])
    expected = (neg_logsigmoid(-5 * (-0.07)) + neg_logsigmoid(-5 * (-1) * (-0.04))) / 2
    assert vanilla_dpo_loss(err_a, err_b, ref_a, ref_b, labels, beta).item() == pytest.approx(
        expected, rel=1e-12
    )


def test_dense_with_one_segment_equals_vanilla():
    gen = torch.Generator().manual_seed(0)
    err_a, err_b, ref_a, ref_b = (torch.rand(3, 7, generator=gen, dtype=torch.float64) for _ in range(4))
    video_labels = t([1, -1, 1])
    labels = video_labels[:, None].expand(3, 7).clone()
    segment_ids = torch.zeros(3, 7, dtype=torch.long)
    dense = dense_dpo_loss(
        err_a, err_b, ref_a, ref_b, labels, 500.0, segment_ids=segment_ids, reduction="segment"
    )
    vanilla = vanilla_dpo_loss(
        err_a.mean(1), err_b.mean(1), ref_a.mean(1), ref_b.mean(1), video_labels, 500.0
    )
    assert dense.item() == pytest.approx(vanilla.item(), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    reduction=st.sampled_from(["frame", "segment"]),
    beta=st.sampled_from([1.0, 500.0]),
)
def test_swapping_a_and_b_and_negating_labels_leaves_the_loss_unchanged(seed, reduction, beta):
    gen = torch.Generator().manual_seed(seed)
    err_a, err_b, ref_a, ref_b = (
        torch.rand(2, 6, generator=gen, dtype=torch.float64) * 0.01 for _ in range(4)
    )
    segment_ids = torch.tensor([[0, 0, -1, 1, 1, 1], [0, 0, 0, 1, 1, 2]])
    seg_label = torch.randint(-1, 2, (2, 3), generator=gen)
    labels = torch.gather(seg_label, 1, segment_ids.clamp(min=0)).double()
    kw = {"segment_ids": segment_ids, "reduction": reduction}
    forward = dense_dpo_loss(err_a, err_b, ref_a, ref_b, labels, beta, **kw)
    swapped = dense_dpo_loss(err_b, err_a, ref_b, ref_a, -labels, beta, **kw)
    assert swapped.item() == pytest.approx(forward.item(), rel=1e-12)
    video = seg_label[:, 0].double()
    v_forward = vanilla_dpo_loss(err_a[:, 0], err_b[:, 0], ref_a[:, 0], ref_b[:, 0], video, beta)
    v_swapped = vanilla_dpo_loss(err_b[:, 0], err_a[:, 0], ref_b[:, 0], ref_a[:, 0], -video, beta)
    assert v_swapped.item() == pytest.approx(v_forward.item(), rel=1e-12)


@pytest.mark.parametrize("reduction", ["frame", "segment"])
def test_masked_frames_get_zero_gradient(reduction):
    gen = torch.Generator().manual_seed(1)
    err_a, err_b = (torch.rand(2, 5, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
    ref_a, ref_b = (torch.rand(2, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    labels = t([[1, 0, 1, -1, 0], [0, -1, -1, 0, 1]])
    segment_ids = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 1, 2]])
    loss = dense_dpo_loss(
        err_a, err_b, ref_a, ref_b, labels, 500.0, segment_ids=segment_ids, reduction=reduction
    )
    loss.backward()
    masked = labels == 0
    for grad in (err_a.grad, err_b.grad):
        assert torch.all(grad[masked] == 0)
        assert torch.all(grad[~masked] != 0)


def test_all_tie_batch_gives_zero_loss_not_nan_with_a_gradient_path():
    err_a, err_b = torch.rand(2, 4, requires_grad=True), torch.rand(2, 4, requires_grad=True)
    ref = torch.rand(2, 4)
    labels = torch.zeros(2, 4)
    for loss in (
        dense_dpo_loss(err_a, err_b, ref, ref, labels, 500.0),
        dense_dpo_loss(
            err_a, err_b, ref, ref, labels, 500.0, segment_ids=torch.zeros(2, 4), reduction="segment"
        ),
        vanilla_dpo_loss(err_a[:, 0], err_b[:, 0], ref[:, 0], ref[:, 0], labels[:, 0], 500.0),
    ):
        assert loss.item() == 0.0 and not torch.isnan(loss)
        assert loss.requires_grad
        loss.backward()
        assert torch.all(err_a.grad == 0)


def test_nan_in_a_masked_frame_does_not_leak():
    err_a = torch.tensor([[0.1, float("nan")]])
    zero = torch.zeros(1, 2)
    loss = dense_dpo_loss(err_a, zero, zero, zero, torch.tensor([[1.0, 0.0]]), 10.0)
    assert loss.item() == pytest.approx(neg_logsigmoid(-0.5))


def test_bad_inputs_raise_clear_errors():
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="labels must be"):
        dense_dpo_loss(x, x, x, x, torch.tensor([[2.0, 0.0, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="ref_err_b has shape"):
        dense_dpo_loss(x, x, x, torch.zeros(1, 4), x, 1.0)
    with pytest.raises(ValueError, match="needs segment_ids"):
        dense_dpo_loss(x, x, x, x, x, 1.0, reduction="segment")
    with pytest.raises(ValueError, match="reduction must be"):
        dense_dpo_loss(x, x, x, x, x, 1.0, reduction="video")
    with pytest.raises(ValueError, match="labels differ"):
        dense_dpo_loss(x, x, x, x, torch.tensor([[1.0, -1.0, 0.0]]), 1.0,
                       segment_ids=torch.zeros(1, 3), reduction="segment")  # fmt: skip
    with pytest.raises(ValueError, match="must have 1 dims"):
        vanilla_dpo_loss(x, x, x, x, x, 1.0)


def test_preference_metrics_match_hand_computation():
    beta = 10.0
    # rewards r = -5 * d: r_A = [0.1, 0, -0.25], r_B = [-0.25, 0, 0.05]
    metrics = preference_metrics(ERR_A, ERR_B, REF_A, REF_B, t([[1, 0, -1]]), beta)
    # frame 0: chosen A 0.1 > rejected B -0.25 (correct); frame 2: chosen B 0.05 > rejected A -0.25 (correct)
    assert metrics["implicit_acc"] == 1.0
    assert metrics["reward_margin"] == pytest.approx(((0.1 + 0.25) + (0.05 + 0.25)) / 2)
    assert metrics["rewards_chosen"] == pytest.approx((0.1 + 0.05) / 2)
    assert metrics["rewards_rejected"] == pytest.approx(-0.25)
    assert metrics["labeled"] == 2
    wrong = preference_metrics(ERR_A, ERR_B, REF_A, REF_B, t([[-1, 0, 1]]), beta)
    assert wrong["implicit_acc"] == 0.0 and wrong["reward_margin"] < 0
    none = preference_metrics(ERR_A, ERR_B, REF_A, REF_B, t([[0, 0, 0]]), beta)
    assert none == {"implicit_acc": 0.0, "reward_margin": 0.0, "rewards_chosen": 0.0, "rewards_rejected": 0.0,
                    "labeled": 0}  # fmt: skip
