"""SimCLR (Chen et al. 2020) and SupCon (Khosla et al. 2020): encoder + projection head, the
contrastive objectives, and the augmentation that makes the two views.

Reads top-down: the residual block, the small ResNet encoder for 8×8 … 32×32 images, the MLP
projection head, :class:`SimCLR`, then the objective (NT-Xent, SupCon) and
:class:`ContrastiveAugment`. The network returns ``(projections, features)``; the objective
turns the projections of two augmented views into NT-Xent or SupCon, and the features h
(before the head) are what downstream tasks use (SimCLR §4.2: h is linearly more informative
than z = g(h)). The two registered names build the same network; they differ in the
objective their LightningModule trains (``lit/simclr.py``).

The objective follows the notes (``shared/notes/003``, "Contrastive loss"), Chen et al. 2020
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

**Views.** SimCLR's views (Chen et al. 2020, §3 and appendix A) are a random resized crop,
colour distortion and Gaussian blur; for small grey images :class:`ContrastiveAugment` uses
their analogues: crop + affine (rotation, shear, translation) in one resampling,
brightness/contrast jitter, blur and pixel noise. Every image of a batch gets its own random
parameters. ``torchvision.transforms.v2`` classes draw *one* parameter set per call, so
calling them on a batch would crop every image the same way and the two views would differ
only by one batch-wide transform — an easy shortcut for the loss. The geometry therefore
builds one affine matrix per image and resamples the whole batch in one ``grid_sample`` (the
same maths as v2's ``affine`` and ``resized_crop``); the blur uses
``torchvision.transforms.v2.functional.gaussian_blur``. It runs on the batch's device (GPU
included) with the global torch RNG (seeded by ``seed_everything``).
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2.functional import gaussian_blur

from mlnotes_zoo.constraints import Field, Fraction, PositiveInt
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

OBJECTIVE = ["nt_xent", "supcon", "gather_with_grad"]
__all__ = ["ResidualBlock", "ResNetEncoder", "ProjectionHead", "SimCLR", "SupCon",
           "SimCLROutput", *OBJECTIVE, "ContrastiveAugment"]

class ResidualBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3×3 convs with BN, identity or 1×1 shortcut."""

    def __init__(self, *, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """Small ResNet for tiny images: a 3×3 stem (no max-pool: 8×8 inputs have no pixels to
    spare, as in SimCLR's CIFAR variant), then one stage per width, each stage after the
    first halving the resolution; global average pooling gives h (B, widths[-1])."""

    def __init__(self, *, in_channels: int, widths: tuple[int, ...],
                 blocks_per_stage: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks_per_stage):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(ResidualBlock(in_channels=channels, out_channels=width,
                                            stride=stride))
                channels = width
        self.blocks = nn.ModuleList(blocks)
        self.out_features = channels

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)  # (B, w0, H, W)
        for block in self.blocks:
            h = block(h)  # (B, w_s, H/2^s, W/2^s)
        return h.mean(dim=(-2, -1))  # (B, w_last)


class ProjectionHead(nn.Module):
    """g(h) = W2 ReLU(BN(W1 h)): the MLP whose output the contrastive loss sees (SimCLR §2.1)."""

    def __init__(self, *, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_features),
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class SimCLROutput(NamedTuple):
    projections: Tensor  # z = g(h), (B, proj_dim): what the loss compares
    features: Tensor  # h = f(x), (B, widths[-1]): what downstream tasks use


@register_model("simclr")
class SimCLR(nn.Module):
    """Encoder f and projection head g: x ↦ (z = g(f(x)), h = f(x)).

    Args:
        in_shape: (C, H, W) of the images (any H, W ≥ 2^(len(widths)-1)).
        widths: channels of the encoder stages; every stage after the first halves H and W.
        blocks_per_stage: residual blocks per stage.
        proj_hidden, proj_dim: hidden width and output size of the projection head.
        encoder: pass your own module mapping (B, C, H, W) to (B, F); give its
            ``out_features`` attribute (F), or it is inferred from one forward.

    Use ``trainer.sync_batchnorm=true`` under DDP: SimCLR's global BN keeps a rank's batch
    statistics from giving its positives away (Chen et al. 2020, §B.5).
    """

    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = (ResidualBlock,)

    def __init__(
        self,
        *,
        in_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 8, 8),
        widths: Annotated[tuple[PositiveInt, ...], Field(min_length=1)] = (16, 32, 64),
        blocks_per_stage: PositiveInt = 1,
        proj_hidden: PositiveInt = 64,
        proj_dim: PositiveInt = 32,
        encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        in_shape = tuple(in_shape)
        widths = tuple(widths)
        self.in_shape = in_shape
        if encoder is None:
            encoder = ResNetEncoder(in_channels=in_shape[0], widths=widths,
                                    blocks_per_stage=blocks_per_stage)
        self.encoder = encoder
        feat_dim = getattr(encoder, "out_features", None)
        if feat_dim is None:
            with torch.no_grad():
                feat_dim = encoder.eval()(torch.zeros(2, *in_shape)).shape[-1]
            encoder.train()
        self.feature_dim = int(feat_dim)
        self.head = ProjectionHead(in_features=self.feature_dim, hidden=proj_hidden,
                                   out_features=proj_dim)

    def forward(self, x: Tensor) -> SimCLROutput:
        # any H, W: the encoder ends in global average pooling
        check_tensor(x, "x", ("B", self.in_shape[0], "H", "W"),
                     where=f"{type(self).__name__}.forward")
        features = self.encoder(x)
        return SimCLROutput(self.head(features), features)

    def example_input(self, batch_size: int = 2) -> Tensor:
        """A valid input batch (images in [0, 1]) for tests and benchmarks."""
        return torch.rand(batch_size, *self.in_shape)


@register_model("supcon")
class SupCon(SimCLR):
    """The SimCLR network under its SupCon name: same f and g, trained with labels
    (Khosla et al. 2020 use the same architecture; only the objective changes)."""


# -- the objective: NT-Xent and SupCon, gathered across ranks ----------------------------
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


# -- the views: per-image random augmentation of a batch ---------------------------------
class ContrastiveAugment(nn.Module):
    """(B, C, H, W) images in [0, 1] -> one random view of each, same shape, in [0, 1].

    Args:
        crop_scale: range of the crop's area as a fraction of the image (RandomResizedCrop).
        crop_ratio: range of the crop's aspect ratio (sampled log-uniformly).
        degrees: rotation drawn from U(−degrees, degrees).
        shear: shear angle in degrees drawn from U(−shear, shear) along x.
        translate: shift drawn from U(−translate, translate) of the image size, per axis.
        flip_p: probability of a horizontal flip (0 for digits: a flipped 2 is not a 2).
        jitter: brightness and contrast factors drawn from U(1 − jitter, 1 + jitter).
        blur_p, blur_sigma: probability of a Gaussian blur and the range of its σ (pixels).
        noise_std: standard deviation of additive Gaussian pixel noise.
    """

    def __init__(
        self,
        *,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        degrees: float = 15.0,
        shear: float = 10.0,
        translate: float = 0.1,
        flip_p: Fraction = 0.0,
        jitter: float = 0.4,
        blur_p: Fraction = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 1.0),
        noise_std: float = 0.05,
    ) -> None:
        super().__init__()
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}")
        if not 0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {crop_ratio}")
        # LitSimCLR builds this from a plain dict, which no other check sees
        for name, p in (("flip_p", flip_p), ("blur_p", blur_p)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.degrees, self.shear, self.translate = degrees, shear, translate
        self.flip_p, self.jitter = flip_p, jitter
        self.blur_p, self.blur_sigma, self.noise_std = blur_p, tuple(blur_sigma), noise_std

    def affine_matrices(self, batch_size: int, device: torch.device) -> Tensor:
        """(B, 2, 3) maps from output to input coordinates in [−1, 1] (``affine_grid``):
        input = crop ∘ translate ∘ rotate ∘ shear ∘ flip (output)."""

        def uniform(lo: float, hi: float) -> Tensor:
            return torch.empty(batch_size, device=device).uniform_(lo, hi)

        # Random resized crop: area s, aspect r -> half-width w, half-height h (≤ 1), centre c
        area = uniform(*self.crop_scale)
        ratio = torch.exp(uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])))
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (1 - w) * uniform(-1, 1)
        cy = (1 - h) * uniform(-1, 1)
        angle = torch.deg2rad(uniform(-self.degrees, self.degrees))
        shear = torch.tan(torch.deg2rad(uniform(-self.shear, self.shear)))
        flip = torch.where(torch.rand(batch_size, device=device) < self.flip_p, -1.0, 1.0)
        tx, ty = (2 * self.translate * uniform(-1, 1) for _ in range(2))
        cos, sin = torch.cos(angle), torch.sin(angle)
        # rotate · shear_x · flip:  [[cos, −sin], [sin, cos]] · [[1, k], [0, 1]] · [[f, 0], [0, 1]]
        a11, a12 = cos * flip, cos * shear - sin
        a21, a22 = sin * flip, sin * shear + cos
        # crop scales and shifts the result: x_in = diag(w, h) (A x_out + t) + c
        rows = torch.stack([
            torch.stack([w * a11, w * a12, w * tx + cx], dim=-1),
            torch.stack([h * a21, h * a22, h * ty + cy], dim=-1),
        ], dim=1)
        return rows  # (B, 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        theta = self.affine_matrices(b, x.device).to(x.dtype)
        grid = F.affine_grid(theta, [b, c, height, width], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.jitter > 0:
            shape = (b, 1, 1, 1)
            brightness = torch.empty(shape, device=x.device).uniform_(1 - self.jitter,
                                                                      1 + self.jitter)
            contrast = torch.empty(shape, device=x.device).uniform_(1 - self.jitter,
                                                                    1 + self.jitter)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * contrast + mean) * brightness
        if self.blur_p > 0:
            chosen = torch.rand(b, device=x.device) < self.blur_p
            if chosen.any():
                # kernel about 10% of the image side as in SimCLR, at least 3 and odd
                size = max(3, int(0.1 * min(height, width)) // 2 * 2 + 1)
                # one σ per call: v2's blur takes one kernel for the batch it is given
                sigma = float(torch.empty(()).uniform_(*self.blur_sigma))
                blurred = gaussian_blur(x[chosen], kernel_size=[size, size], sigma=[sigma, sigma])
                x = x.clone()
                x[chosen] = blurred
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        return x.clamp(0, 1)

