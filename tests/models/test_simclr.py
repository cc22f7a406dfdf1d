"""SimCLR network and the batched view augmentation.

NT-Xent and SupCon against straightforward loop implementations, and under 2 gloo ranks.
"""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from mlnotes_zoo import create_model
from mlnotes_zoo.models.simclr import (
    ContrastiveAugment,
    ResidualBlock,
    SimCLR,
    SupCon,
    nt_xent,
    supcon,
)

IDENTITY = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), degrees=0.0, shear=0.0,
                translate=0.0, jitter=0.0, blur_p=0.0, noise_std=0.0)


@pytest.mark.parametrize("in_shape", [(1, 8, 8), (3, 32, 32)])
def test_outputs_projections_and_features(in_shape):
    net = create_model("simclr", in_shape=in_shape, widths=[8, 16, 32], proj_dim=12)
    out = net(net.example_input(5))
    assert out.projections.shape == (5, 12) and out.features.shape == (5, 32)
    assert net.feature_dim == 32


def test_supcon_is_the_same_network_under_its_own_name():
    a, b = create_model("simclr"), create_model("supcon")
    assert isinstance(b, SupCon) and isinstance(b, SimCLR)
    assert a.state_dict().keys() == b.state_dict().keys()


def test_repeated_blocks_are_called_on_tensors():
    net = create_model("simclr", widths=[8, 16], blocks_per_stage=2)
    seen = []
    for module in net.modules():
        if isinstance(module, net.repeated_blocks):
            module.register_forward_hook(lambda m, i, o: seen.append(torch.is_tensor(o)))
    net(net.example_input(2))
    assert seen == [True] * 4 and net.repeated_blocks == (ResidualBlock,)


def test_custom_encoder_feature_size_is_inferred():
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 20))
    net = SimCLR(encoder=encoder, proj_dim=4)
    assert net.feature_dim == 20 and net(torch.rand(3, 1, 8, 8)).projections.shape == (3, 4)


def test_identity_augmentation_returns_the_input_and_flip_mirrors_it():
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(ContrastiveAugment(**IDENTITY)(x), x, atol=1e-5, rtol=0)
    flipped = ContrastiveAugment(**{**IDENTITY, "flip_p": 1.0})(x)
    torch.testing.assert_close(flipped, x.flip(-1), atol=1e-5, rtol=0)


def test_crop_zooms_into_the_image():
    # the largest crop of a fixed area, centred ((1 − w) · U(−1, 1) with w = 1 is 0): a
    # half-area square crop of a left-to-right ramp spans the middle √½ of its range
    aug = ContrastiveAugment(**{**IDENTITY, "crop_scale": (0.5, 0.5)})
    theta = aug.affine_matrices(16, torch.device("cpu"))
    w = theta[:, 0, 0]
    torch.testing.assert_close(w, torch.full((16,), 0.5 ** 0.5))
    assert (theta[:, 0, 2].abs() <= 1 - w + 1e-6).all()  # crop stays inside the image


def test_every_image_gets_its_own_view():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16).expand(6, -1, -1, -1)  # six copies of one image
    views = ContrastiveAugment()(x)
    assert views.shape == x.shape and views.min() >= 0 and views.max() <= 1
    distinct = {tuple(v.flatten().round(decimals=4).tolist()) for v in views}
    assert len(distinct) == 6


# -- the objective ------------------------------------------------------------------------
def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def nt_xent_loops(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """SimCLR eq. 1 anchor by anchor, in float64 Python arithmetic."""
    z = [v.double() for v in torch.cat([z1, z2])]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        denominator = sum(math.exp(_cos(z[i], z[a]) / tau) for a in range(2 * n) if a != i)
        total += -math.log(math.exp(_cos(z[i], z[p]) / tau) / denominator)
    return total / (2 * n)


def supcon_loops(features: torch.Tensor, labels: torch.Tensor, tau: float) -> float:
    """Khosla et al. eq. 2 (L_out) anchor by anchor; views flattened in any order."""
    n, views, _ = features.shape
    z = [features[j, v].double() for j in range(n) for v in range(views)]
    y = [int(labels[j]) for j in range(n) for _ in range(views)]
    losses = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and y[p] == y[i]]
        if not positives:
            continue
        denominator = sum(math.exp(_cos(z[i], z[a]) / tau) for a in range(len(z)) if a != i)
        losses.append(-sum(math.log(math.exp(_cos(z[i], z[p]) / tau) / denominator)
                           for p in positives) / len(positives))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_nt_xent_equals_loop_reference(tau):
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=gen) * 3, torch.randn(6, 5, generator=gen)
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(nt_xent_loops(z1, z2, tau), rel=1e-5)


def test_nt_xent_is_low_for_aligned_views_and_log_of_candidates_for_identical_ones():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(8, 16, generator=gen)
    aligned = nt_xent(z, z + 0.01 * torch.randn(8, 16, generator=gen), 0.1)
    shuffled = nt_xent(z, z[torch.randperm(8, generator=gen)], 0.1)
    assert aligned < shuffled
    # all 2N views equal: every logit ties, ℓ_i = log(2N − 1)
    same = torch.ones(4, 3)
    assert float(nt_xent(same, same, 0.5)) == pytest.approx(math.log(7), rel=1e-6)


@pytest.mark.parametrize("views", [1, 2, 3])
def test_supcon_equals_loop_reference(views):
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(7, views, 4, generator=gen)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # class 2 and 3 alone: no positive with V=1
    expected = supcon_loops(features, labels, 0.2)
    assert float(supcon(features, labels, 0.2)) == pytest.approx(expected, rel=1e-5)


def test_supcon_with_image_index_as_label_is_nt_xent():
    gen = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    torch.testing.assert_close(supcon(torch.stack([z1, z2], 1), torch.arange(5), 0.3),
                               nt_xent(z1, z2, 0.3))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="labels"):
        supcon(torch.randn(3, 2, 4), torch.arange(4))


# -- two gloo ranks == one process on the concatenated batch ----------------------------------
WORLD, N, DIM, TAU = 2, 4, 6, 0.3


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    z1 = torch.randn(WORLD * N, DIM, generator=gen, dtype=torch.float64)
    z2 = torch.randn(WORLD * N, DIM, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (WORLD * N,), generator=gen)
    return z1, z2, labels


def _rank_worker(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        z1, z2, labels = _inputs()
        local = slice(rank * N, (rank + 1) * N)
        out = {}
        a, b = z1[local].clone().requires_grad_(), z2[local].clone().requires_grad_()
        loss = nt_xent(a, b, TAU)
        loss.backward()
        out["nt_xent"] = (loss.item(), a.grad.clone(), b.grad.clone())
        a.grad, b.grad = None, None
        loss = supcon(torch.stack([a, b], 1), labels[local], TAU)
        loss.backward()
        out["supcon"] = (loss.item(), a.grad.clone(), b.grad.clone())
        results[rank] = out
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
def test_two_gloo_ranks_match_single_process_loss_and_gradients():
    """Each rank's loss covers its own anchors against all ranks' candidates; DDP averages
    the W ranks' gradients, so mean(rank losses) and Σ_r grad_r / W must equal the
    single-process loss and gradient on the concatenated batch — including the gradient
    that reaches a rank's embeddings through the *other* rank's loss (all_gather backward)."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    results = mp.Manager().dict()
    mp.spawn(_rank_worker, args=(_free_port(), results), nprocs=WORLD, join=True)

    z1, z2, labels = _inputs()
    for name in ("nt_xent", "supcon"):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        full = nt_xent(a, b, TAU) if name == "nt_xent" else supcon(torch.stack([a, b], 1),
                                                                    labels, TAU)
        full.backward()
        losses = [results[r][name][0] for r in range(WORLD)]
        assert sum(losses) / WORLD == pytest.approx(full.item(), rel=1e-10)
        for r in range(WORLD):
            local = slice(r * N, (r + 1) * N)
            _, grad_a, grad_b = results[r][name]
            # the rank's gradient, averaged by DDP (÷ W), is the single-process gradient
            torch.testing.assert_close(grad_a / WORLD, a.grad[local], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(grad_b / WORLD, b.grad[local], rtol=1e-10, atol=1e-12)
