"""Connectionist temporal classification (Graves et al. 2006), the speech model's objective.

The notes (``shared/notes/003`` "CTC Loss"): a many-to-many prediction with no one-to-one
correspondence between the T output frames and the S ≪ T labels. CTC adds a blank token
(index 0 here) and a collapse map B that merges repeats between blanks and drops blanks,
B(a a ∅ a b b ∅) = "aab", and sums over every frame-level path that collapses to the labels:

    p(y | x) = Σ_{π : B(π) = y} Π_t p_t(π_t | x),        loss = −log p(y | x)

computed by the forward (α) recursion inside ``torch.nn.functional.ctc_loss``.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

__all__ = ["BLANK", "ctc_loss"]

BLANK = 0  # index of the blank token in every CTC output of the zoo


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    *,
    reduction: Literal["mean", "sum", "none"] = "mean",
    zero_infinity: bool = True,
) -> Tensor:
    """−log p(y|x) of padded label batches under frame posteriors, blank = 0.

    Args:
        log_probs: (B, T, C) log-softmax outputs, batch first (the zoo's layout; transposed
            to the (T, B, C) that cuDNN/CPU kernels take).
        targets: (B, S) label ids in 1..C−1, padded with anything past ``target_lengths``.
        input_lengths: (B,) valid frames of each output sequence (after subsampling).
        target_lengths: (B,) labels of each target.
        reduction: ``"mean"`` divides each utterance's loss by its label count, then
            averages over the batch (``torch.nn.CTCLoss``'s convention); ``"sum"``/``"none"``.
        zero_infinity: an infeasible pair (fewer frames than labels plus the blanks that
            separate repeats) has p(y|x) = 0; count it as loss 0 instead of +inf.
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, C), got shape {tuple(log_probs.shape)}")
    return F.ctc_loss(
        log_probs.transpose(0, 1),  # (T, B, C)
        targets,
        input_lengths,
        target_lengths,
        blank=BLANK,
        reduction=reduction,
        zero_infinity=zero_infinity,
    )
