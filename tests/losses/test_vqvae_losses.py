"""VQ-VAE loss terms (gradients go where van den Oord et al. 2017 say) and codebook usage
metrics, against direct computations."""

from __future__ import annotations

import math

import torch
from torch.distributions import Categorical

from mlnotes_zoo import create_model
from mlnotes_zoo.losses import codebook_loss, commitment_loss, reconstruction_error, vqvae_loss
from mlnotes_zoo.metrics.codebook import CodebookUsage, codebook_perplexity


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
