"""VQ-VAE network: quantisation, straight-through gradient, EMA codebook, dead-code restarts,
each against a direct computation written out here.

VQ-VAE loss terms (gradients go where van den Oord et al. 2017 say) and codebook usage
metrics, against direct computations.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical

from mlnotes_zoo import create_model
from mlnotes_zoo.models.vqvae import (
    VQVAE,
    CodebookUsage,
    VectorQuantizer,
    codebook_loss,
    codebook_perplexity,
    commitment_loss,
    reconstruction_error,
    vqvae_loss,
)


def _brute_force_nearest(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    # (N, 1, D) − (1, K, D): every distance spelled out, no expansion trick
    return ((flat[:, None, :] - codebook[None, :, :]) ** 2).sum(-1).argmin(1)


def test_nearest_neighbour_assignment_equals_brute_force_argmin():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=37, embedding_dim=5)
    with torch.no_grad():
        vq.codebook.normal_()
    z_e = torch.randn(6, 5, 3, 4)  # (B, D, h, w)
    z_q, z_st, indices = vq.eval()(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 5)
    expected = _brute_force_nearest(flat, vq.codebook.detach())
    assert torch.equal(indices.flatten(), expected)
    # The grid keeps its layout: position (b, i, j) holds the code of z_e[b, :, i, j].
    assert torch.equal(indices[2, 1, 3], expected.view(6, 3, 4)[2, 1, 3])
    torch.testing.assert_close(z_q[2, :, 1, 3], vq.codebook[indices[2, 1, 3]].detach())
    torch.testing.assert_close(z_st, z_q.detach())


def test_straight_through_gradient_is_the_identity_on_z_e():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=16, embedding_dim=4)
    z_e = torch.randn(3, 4, 2, 2, requires_grad=True)
    upstream = torch.randn(3, 4, 2, 2)
    _, z_st, _ = vq(z_e)
    (z_st * upstream).sum().backward()
    # ∂L/∂z_e = ∂L/∂z_q exactly: the quantiser is the identity for the backward pass
    torch.testing.assert_close(z_e.grad, upstream, rtol=0, atol=0)
    assert vq.codebook.grad is None  # the decoder's gradient never reaches the codes


def test_decoder_gradient_reaches_the_encoder_through_the_quantiser():
    torch.manual_seed(0)
    model = create_model("vqvae", hidden=16, residual_hidden=8, num_codes=8, embedding_dim=4)
    x = model.example_input(4)
    z_e = model.encoder(x)
    z_e.retain_grad()
    out = model.decode(model.quantizer(z_e).z_st)
    out.square().sum().backward()
    # Autograd of the decoder alone, evaluated at z_q, must equal the gradient seen at z_e.
    z_q = model.quantizer.lookup(model.quantizer.assign(
        z_e.detach().permute(0, 2, 3, 1).reshape(-1, 4)).view(4, 4, 4)).detach().requires_grad_()
    (grad_at_z_q,) = torch.autograd.grad(model.decode(z_q).square().sum(), z_q)
    torch.testing.assert_close(z_e.grad, grad_at_z_q)


def test_ema_update_equals_direct_ema_of_cluster_means():
    torch.manual_seed(0)
    k, d, decay, eps = 6, 3, 0.9, 1e-5
    vq = VectorQuantizer(num_codes=k, embedding_dim=d, ema=True, decay=decay, eps=eps)
    assert "codebook" not in dict(vq.named_parameters())  # a buffer: no optimizer touches it
    # Reference state, written from the definitions (van den Oord et al. 2017, App. A.1).
    codebook = vq.codebook.clone()
    cluster_size, embed_sum = torch.ones(k), codebook.clone()
    for step in range(5):
        z_e = torch.randn(4, d, 3, 3) + step * 0.1
        vq.train()(z_e)
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        assign = _brute_force_nearest(flat, codebook)
        for j in range(k):
            members = flat[assign == j]
            cluster_size[j] = decay * cluster_size[j] + (1 - decay) * len(members)
            embed_sum[j] = decay * embed_sum[j] + (1 - decay) * members.sum(0)
        n = cluster_size.sum()
        smoothed = (cluster_size + eps) / (n + k * eps) * n
        codebook = embed_sum / smoothed[:, None]
        torch.testing.assert_close(vq.ema_cluster_size, cluster_size)
        torch.testing.assert_close(vq.codebook, codebook)
    # Eval mode leaves the codebook alone.
    before = vq.codebook.clone()
    vq.eval()(torch.randn(2, d, 3, 3))
    assert torch.equal(vq.codebook, before)


def test_ema_codes_converge_to_cluster_means():
    # With fixed data and well-separated clusters, e_k → mean of its cluster (EMA fixed point).
    torch.manual_seed(0)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
    points = centres.repeat_interleave(50, 0) + 0.3 * torch.randn(150, 2)
    vq = VectorQuantizer(num_codes=3, embedding_dim=2, ema=True, decay=0.8)
    with torch.no_grad():
        vq.codebook.copy_(centres * 0.5)
        vq.ema_embed_sum.copy_(centres * 0.5)
    z_e = points.T.reshape(1, 2, 150, 1)
    for _ in range(200):
        vq.train()(z_e)
    means = torch.stack([points[i * 50:(i + 1) * 50].mean(0) for i in range(3)])
    torch.testing.assert_close(vq.codebook, means, atol=1e-3, rtol=0)


def test_dead_code_restart_replaces_unused_codes():
    torch.manual_seed(0)
    for ema in (False, True):
        vq = VectorQuantizer(num_codes=4, embedding_dim=2, ema=ema, restart_after=3)
        with torch.no_grad():
            vq.codebook.copy_(torch.tensor([[0.0, 0.0], [0.1, 0.0], [100.0, 100.0],
                                            [-100.0, 50.0]]))
            if ema:
                vq.ema_embed_sum.copy_(vq.codebook)
        z_e = torch.randn(2, 2, 4, 4) * 0.1  # every vector is near codes 0 and 1
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
        for _ in range(3):  # codes 2 and 3 go unused for 3 steps: dead, not yet restarted
            vq.train()(z_e)
        assert vq.code_age.tolist() == [0, 0, 3, 3]
        live = vq.codebook[:2].clone()
        assert vq.restart_dead_codes(flat).tolist() == [2, 3]
        for j in (2, 3):  # each re-seeded code is exactly one of the batch's encoder outputs
            assert (vq.codebook[j] - flat).abs().sum(1).min() == 0
        assert not torch.equal(vq.codebook[2], vq.codebook[3])  # two different outputs
        torch.testing.assert_close(vq.codebook[:2], live)  # live codes untouched
        assert vq.code_age.tolist() == [0, 0, 0, 0]
        if ema:  # the EMA state restarts with the new code as a cluster of size 1
            assert vq.ema_cluster_size[2:].tolist() == [1.0, 1.0]
            torch.testing.assert_close(vq.ema_embed_sum[2:], vq.codebook[2:])
        _, _, indices = vq.train()(z_e)
        assert {2, 3} <= set(indices.unique().tolist())  # and they are used right away


def test_training_forward_restarts_dead_codes_by_itself():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=8, embedding_dim=2, restart_after=2)
    with torch.no_grad():
        vq.codebook.fill_(100.0)
        vq.codebook[0] = 0.0
    z_e = torch.randn(4, 2, 4, 4)
    used = set()
    for _ in range(4):
        used |= set(vq.train()(z_e).indices.unique().tolist())
    assert used == set(range(8))


def test_restarts_off_by_default_leave_dead_codes():
    vq = VectorQuantizer(num_codes=3, embedding_dim=1)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0], [50.0], [-50.0]]))
    for _ in range(5):
        vq.train()(torch.zeros(1, 1, 2, 2))
    assert vq.codebook[1:].flatten().tolist() == [50.0, -50.0]
    assert vq.code_age.tolist() == [0, 5, 5]


@pytest.mark.parametrize("in_shape,downsamples,grid", [((1, 8, 8), 1, (4, 4)),
                                                       ((1, 28, 28), 2, (7, 7)),
                                                       ((3, 32, 32), 2, (8, 8))])
def test_shapes_for_digits_mnist_cifar(in_shape, downsamples, grid):
    model = create_model("vqvae", in_shape=in_shape, num_downsamples=downsamples, hidden=16,
                         residual_hidden=8, num_residual_blocks=1)
    x = model.example_input(2)
    x_hat, z_e, z_q, indices = model(x)
    assert x_hat.shape == x.shape and (0 <= x_hat).all() and (x_hat <= 1).all()
    assert indices.shape == (2, *grid) and z_e.shape == z_q.shape == (2, 16, *grid)
    model.eval()
    torch.testing.assert_close(model.decode_indices(model.encode(x)), model(x).reconstruction)


def test_invalid_arguments_are_errors():
    with pytest.raises(ValueError, match="divisible"):
        create_model("vqvae", in_shape=(1, 8, 8), num_downsamples=4)
    with pytest.raises(ValueError, match="output"):
        create_model("vqvae", output="tanh")
    with pytest.raises(ValueError, match="decay"):
        create_model("vqvae", decay=1.0)
    assert VQVAE.repeated_blocks and create_model("vqvae").bits_per_image == 16 * 6


_DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from mlnotes_zoo.models.vqvae import VectorQuantizer
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
full = torch.randn(4, 3, 4, 4)  # the global batch; rank r gets half of it
results = {}
for name, kwargs in (("ema", dict(ema=True, decay=0.9)),
                     ("restart", dict(ema=True, restart_after=1))):
    torch.manual_seed(2)  # the same initial codes on every rank (DDP broadcasts them)
    vq = VectorQuantizer(num_codes=8, embedding_dim=3, **kwargs)
    torch.manual_seed(1 + rank)  # different local randomness: restarts must still agree
    for step in range(4):
        vq.train()(full[2 * rank:2 * rank + 2] + 0.1 * step)
    results[name] = vq.codebook.clone()
torch.save(results, f"{sys.argv[1]}/rank{rank}.pt")
dist.destroy_process_group()
"""


@pytest.mark.dist
def test_ema_statistics_and_restarts_are_synchronised_across_ranks(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_vq.py"
    script.write_text(_DDP_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    # One process on the whole batch gives the same EMA codebook as two ranks on halves.
    torch.manual_seed(0)
    full = torch.randn(4, 3, 4, 4)
    torch.manual_seed(2)
    vq = VectorQuantizer(num_codes=8, embedding_dim=3, ema=True, decay=0.9)
    for step in range(4):
        vq.train()(full + 0.1 * step)
    for result in ranks:
        torch.testing.assert_close(result["ema"], vq.codebook)
    # Restarted codes come from rank 0's batch on every rank: the codebooks stay identical.
    torch.testing.assert_close(ranks[0]["restart"], ranks[1]["restart"], rtol=0, atol=0)


# -- the objective and codebook usage -----------------------------------------------------
def _model_and_outputs():
    torch.manual_seed(0)
    model = create_model("vqvae", hidden=16, residual_hidden=8, num_codes=8, embedding_dim=4)
    with torch.no_grad():
        model.quantizer.codebook.normal_(0, 0.1)
    return model, model(model.example_input(4))


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in module.named_parameters()}


def _nonzero(grad: torch.Tensor | None) -> bool:
    return grad is not None and bool(grad.abs().sum() > 0)


def test_codebook_loss_moves_only_the_codebook_by_the_right_gradient():
    model, (_, z_e, z_q, indices) = _model_and_outputs()
    loss = codebook_loss(z_e, z_q).mean()
    loss.backward()
    assert not any(_nonzero(g) for g in _grads(model.encoder).values())
    assert not any(_nonzero(g) for g in _grads(model.decoder).values())
    # ∂/∂e_k of (1/B) Σ_b (1/(D h w)) Σ_{i in b} ‖z_i − e_{k_i}‖²
    #   = 2/(B D h w) Σ_{i: k_i = k} (e_k − z_i)
    b, d, h, w = z_e.shape
    flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, d)
    codebook = model.quantizer.codebook.detach()
    expected = torch.zeros_like(codebook)
    for z, k in zip(flat, indices.flatten(), strict=True):
        expected[k] += 2 * (codebook[k] - z) / (b * d * h * w)
    torch.testing.assert_close(model.quantizer.codebook.grad, expected)


def test_commitment_loss_moves_only_the_encoder():
    model, (_, z_e, z_q, _) = _model_and_outputs()
    z_e.retain_grad()
    commitment_loss(z_e, z_q).mean().backward()
    assert model.quantizer.codebook.grad is None or not _nonzero(model.quantizer.codebook.grad)
    assert not any(_nonzero(g) for g in _grads(model.decoder).values())
    assert all(_nonzero(g) for g in _grads(model.encoder).values())
    # ∂/∂z_e of mean_b mean((z_e − sg[e])²) = 2 (z_e − e) / numel
    torch.testing.assert_close(z_e.grad, 2 * (z_e - z_q).detach() / z_e.numel())


def test_loss_terms_are_per_example_means_and_combine_with_beta():
    torch.manual_seed(0)
    x, x_hat = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    recon = reconstruction_error(x_hat, x)
    torch.testing.assert_close(recon, torch.nn.functional.mse_loss(
        x_hat, x, reduction="none").mean((1, 2, 3)))
    z_e, z_q = torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2)
    torch.testing.assert_close(codebook_loss(z_e, z_q), commitment_loss(z_e, z_q))  # same value
    total = vqvae_loss(recon, codebook_loss(z_e, z_q), commitment_loss(z_e, z_q), beta=0.25)
    torch.testing.assert_close(total, recon + 1.25 * ((z_e - z_q) ** 2).mean((1, 2, 3)))


def test_perplexity_equals_direct_entropy():
    counts = torch.tensor([5.0, 0.0, 3.0, 2.0, 0.0, 10.0])
    p = counts / counts.sum()
    direct = math.exp(-sum(pi * math.log(pi) for pi in p.tolist() if pi > 0))
    assert abs(codebook_perplexity(counts).item() - direct) < 1e-5
    torch.testing.assert_close(codebook_perplexity(counts), Categorical(probs=p).entropy().exp())
    # Limits: one code used -> 1; K codes used uniformly -> K.
    assert codebook_perplexity(torch.tensor([0.0, 7.0, 0.0])).item() == 1.0
    torch.testing.assert_close(codebook_perplexity(torch.full((16,), 3.0)), torch.tensor(16.0))


def test_codebook_usage_accumulates_the_whole_split():
    torch.manual_seed(0)
    batches = [torch.randint(0, 12, (4, 3, 3)) for _ in range(5)]
    batches.append(torch.full((2, 3, 3), 13))  # a rare code
    usage = CodebookUsage(num_codes=16)
    for indices in batches:
        usage.update(indices)
    result = usage.compute()
    every = torch.cat([b.flatten() for b in batches])
    probs = torch.bincount(every, minlength=16).float() / every.numel()
    torch.testing.assert_close(result["perplexity"], Categorical(probs=probs).entropy().exp())
    assert result["codes_used"].item() == len(every.unique())
    # The split-level figure is not the mean of per-batch perplexities (those are smaller).
    batch_mean = sum(codebook_perplexity(torch.bincount(b.flatten(), minlength=16))
                     for b in batches) / len(batches)
    assert batch_mean < result["perplexity"]
