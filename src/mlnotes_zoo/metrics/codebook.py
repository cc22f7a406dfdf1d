"""Codebook usage of a vector quantiser over a whole split: perplexity and codes used.

    p_k = n_k / Σ_j n_j,   perplexity = exp(H(p)) = exp(−Σ_k p_k log p_k)

Perplexity runs from 1 (every vector on one code) to K (all K codes equally used): the
effective number of codes. It is computed from the counts of the whole split, not averaged
over batches (a batch mean would understate it: a small batch cannot use many codes).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["codebook_perplexity", "CodebookUsage"]


def codebook_perplexity(counts: Tensor) -> Tensor:
    """exp(H(p)) of the code histogram ``counts`` (K,); 0·log 0 = 0."""
    p = counts.float() / counts.sum().clamp_min(1)
    entropy = -torch.special.xlogy(p, p).sum()
    return entropy.exp()


class CodebookUsage(Metric):
    """Accumulates the code histogram over batches (summed across ranks); ``compute()``
    returns ``{"perplexity": exp(H), "codes_used": #codes with n_k > 0}``."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_codes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_codes = num_codes
        self.add_state("counts", default=torch.zeros(num_codes), dist_reduce_fx="sum")

    def update(self, indices: Tensor) -> None:
        self.counts += torch.bincount(indices.flatten(), minlength=self.num_codes).to(
            self.counts.dtype)

    def compute(self) -> dict[str, Tensor]:
        return {"perplexity": codebook_perplexity(self.counts),
                "codes_used": (self.counts > 0).sum().float()}
