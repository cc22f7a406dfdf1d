"""Contrastive objectives: NT-Xent (SimCLR) and supervised contrastive (SupCon).

Notation follows the notes (``shared/notes/003``, "Contrastive loss"), Chen et al. 2020
(SimCLR, eq. 1) and Khosla et al. 2020 (SupCon, eq. 2, the "L_out" form). For 2N views
z_1 … z_2N (two per image), with s_ij = z_i·z_j / (‖z_i‖ ‖z_j‖) and temperature τ:

    NT-Xent:  ℓ_i = −log [ exp(s_{i,p(i)}/τ) / Σ_{a≠i} exp(s_ia/τ) ]       one positive p(i)
    SupCon:   ℓ_i = −1/|P(i)| Σ_{p∈P(i)} log [ exp(s_ip/τ) / Σ_{a≠i} exp(s_ia/τ) ]
              P(i) = {p ≠ i : y_p = y_i}: every other view with the anchor's label

and the loss is the mean of ℓ_i over the anchors. NT-Xent is SupCon with the image index
as the label (tested).

**Distributed.** Under DDP every rank holds its own N images. Negatives must come from all
ranks, and the gradient must flow back into the *other* ranks' embeddings too: each rank
gathers all embeddings with :func:`torch.distributed.nn.functional.all_gather` (whose
backward sums the gradients of every rank into the owner's slice; a plain
``torch.distributed.all_gather`` returns constants and silently drops that half of the
gradient) and computes ℓ_i for its *local* anchors against all candidates. DDP then
averages the parameter gradients over the W ranks, which gives exactly the gradient of the
single-process loss on the concatenated batch (tested with 2 gloo ranks).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["nt_xent", "supcon", "gather_with_grad"]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (n, ...) from every rank along dim 0, differentiably: (W·n, ...).

    The identity on a single process. Every rank must pass the same shape.
    """
    rank, world = _world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def _gather_labels(y: Tensor) -> Tensor:
    rank, world = _world()
    if world == 1:
        return y
    out = [torch.empty_like(y) for _ in range(world)]
    dist.all_gather(out, y.contiguous())  # labels need no gradient
    return torch.cat(out)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5, *,
            gather_distributed: bool = True) -> Tensor:
    """Normalised-temperature cross entropy of SimCLR over the 2N views of N images.

    Args:
        z1, z2: (N, D) projections of the two views; row i of each comes from image i.
        temperature: τ > 0.
        gather_distributed: under ``torch.distributed``, use the views of all ranks as
            candidates (with gradients, see the module docstring).

    Returns:
        Scalar: mean of ℓ_i over this rank's 2N anchors.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (N, D), got {tuple(z1.shape)}, {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    anchors = F.normalize(torch.cat([z1, z2]), dim=1)  # (2n, D), unit length: dot = cosine
    rank, world = _world() if gather_distributed else (0, 1)
    if world > 1:
        # candidates laid out [view 1 of all ranks; view 2 of all ranks]: (2M, D), M = W·n
        candidates = torch.cat([gather_with_grad(anchors[:n]), gather_with_grad(anchors[n:])])
    else:
        candidates = anchors
    m = n * world
    logits = anchors @ candidates.T / temperature  # (2n, 2M): s_ia / τ
    idx = torch.arange(n, device=z1.device) + rank * n  # global index of the local images
    self_idx = torch.cat([idx, idx + m])  # where anchor i sits among the candidates
    positive_idx = torch.cat([idx + m, idx])  # its other view, p(i)
    # Σ_{a≠i}: drop the anchor itself from the softmax denominator (exp(−inf) = 0)
    logits = logits.index_put((torch.arange(2 * n, device=z1.device), self_idx),
                              torch.tensor(float("-inf"), dtype=logits.dtype, device=z1.device))
    # ℓ_i = −log softmax(logits_i)[p(i)]
    return F.cross_entropy(logits, positive_idx)


def supcon(features: Tensor, labels: Tensor, temperature: float = 0.1, *,
           gather_distributed: bool = True) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out): all same-label views positive.

    Args:
        features: (N, V, D) projections of V ≥ 1 views of N images (the layout of the
            paper's reference code); V = 2 for two augmented views.
        labels: (N,) integer class of each image; views of one image share it.
        temperature: τ > 0.
        gather_distributed: under ``torch.distributed``, use all ranks' views as
            candidates, with gradients (see the module docstring).

    Returns:
        Scalar: mean of ℓ_i over this rank's anchors that have at least one positive
        (an anchor without any, possible only with V = 1, has no defined ℓ_i).
    """
    if features.dim() != 3:
        raise ValueError(f"features must be (N, V, D), got {tuple(features.shape)}")
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels must be (N,) = {features.shape[0]}, got {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n, views, _ = features.shape
    # anchors view-major: (V·n, D), row v·n + j is view v of image j
    anchors = F.normalize(features.transpose(0, 1).reshape(n * views, -1), dim=1)
    anchor_labels = labels.repeat(views)  # (V·n,)
    rank, world = _world() if gather_distributed else (0, 1)
    if world > 1:
        # candidates view-major over all ranks: (V·M, D), M = W·n
        candidates = torch.cat([gather_with_grad(anchors[v * n:(v + 1) * n])
                                for v in range(views)])
        all_labels = _gather_labels(labels).repeat(views)
    else:
        candidates, all_labels = anchors, anchor_labels
    m = n * world
    logits = anchors @ candidates.T / temperature  # (V·n, V·M): s_ia / τ
    rows = torch.arange(n * views, device=features.device)
    self_idx = (rows // n) * m + rank * n + rows % n  # anchor i among the candidates
    not_self = torch.ones_like(logits, dtype=torch.bool)
    not_self[rows, self_idx] = False
    positives = (anchor_labels[:, None] == all_labels[None, :]) & not_self  # P(i)
    # log [exp(s_ia/τ) / Σ_{a≠i} exp(s_ia/τ)] for every candidate a
    log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1,
                                        keepdim=True)
    num_pos = positives.sum(1)
    has_pos = num_pos > 0
    # ℓ_i = −1/|P(i)| Σ_{p∈P(i)} log_prob_ip
    per_anchor = -(log_prob * positives).sum(1)[has_pos] / num_pos[has_pos]
    return per_anchor.mean()
