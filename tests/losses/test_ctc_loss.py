"""CTC loss: equals torch's ctc_loss and a brute-force sum over alignments."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mlnotes_zoo.losses.ctc import ctc_loss
from mlnotes_zoo.models.ctc_decoding import collapse


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ctc_loss_equals_torch_ctc_loss_on_variable_length_batches(reduction):
    torch.manual_seed(0)
    B, T, C = 4, 20, 6
    log_probs = torch.randn(B, T, C).log_softmax(-1)
    targets = torch.randint(1, C, (B, 7))
    input_lengths = torch.tensor([20, 17, 12, 9])
    target_lengths = torch.tensor([7, 5, 3, 1])
    ours = ctc_loss(log_probs, targets, input_lengths, target_lengths, reduction=reduction)
    ref = F.ctc_loss(log_probs.transpose(0, 1), targets, input_lengths, target_lengths, blank=0,
                     reduction=reduction)
    torch.testing.assert_close(ours, ref)


def test_ctc_loss_is_minus_log_of_the_sum_over_collapsing_paths():
    # p(y|x) = Σ_{π: B(π) = y} Π_t p_t(π_t): enumerate all C^T paths of a tiny problem.
    torch.manual_seed(1)
    T, C = 5, 3
    log_probs = torch.randn(1, T, C, dtype=torch.float64).log_softmax(-1)
    for label in ([1], [1, 1], [1, 2], [2, 1, 2]):
        total = 0.0
        for path in itertools.product(range(C), repeat=T):
            if collapse(path) == label:
                total += math.exp(sum(log_probs[0, t, c].item() for t, c in enumerate(path)))
        loss = ctc_loss(log_probs, torch.tensor([label]), torch.tensor([T]),
                        torch.tensor([len(label)]), reduction="sum")
        assert loss.item() == pytest.approx(-math.log(total), rel=1e-9)


def test_repeats_need_a_blank_between_them_so_too_short_inputs_are_infeasible():
    # "aa" needs 3 frames (a ∅ a); with 2 frames p(y|x) = 0 -> inf, zeroed by zero_infinity.
    log_probs = torch.randn(1, 2, 3).log_softmax(-1)
    args = (log_probs, torch.tensor([[1, 1]]), torch.tensor([2]), torch.tensor([2]))
    assert torch.isinf(ctc_loss(*args, reduction="sum", zero_infinity=False))
    assert ctc_loss(*args, reduction="sum") == 0
    # "ab" fits in two frames
    ok = ctc_loss(log_probs, torch.tensor([[1, 2]]), torch.tensor([2]), torch.tensor([2]))
    assert torch.isfinite(ok)


def test_rejects_time_major_input():
    with pytest.raises(ValueError, match="B, T, C"):
        ctc_loss(torch.zeros(5, 3), torch.zeros(1, 1, dtype=torch.long), torch.tensor([5]),
                 torch.tensor([1]))
