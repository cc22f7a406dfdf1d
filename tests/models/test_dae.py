"""The denoising autoencoder against independent computations, and a short end-to-end run.

- the link to diffusion (Alain & Bengio 2014): a small MLP DAE trained at small σ on a 2-D
  Gaussian mixture gives (r(x) − x)/σ² ≈ ∇ log p(x), the score of the mixture computed by
  autograd of torch.distributions' log-density;
- the corruptions: the noise has the configured σ (per image), a box hides the configured
  share of the pixels, a half exactly half; masked inputs hide what they should;
- the metrics: PSNR equals 10·log10(1/MSE) written out; the inpainting baselines against
  scikit-learn's NearestNeighbors and a plain mean;
- ``python train.py model=dae`` (shrunk) writes the metrics and pictures.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import distributions as D

from mlnotes_zoo import create_model
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.lit.dae import LitDAE, psnr
from mlnotes_zoo.models.dae import box_masks, denoising_loss, gaussian_corruption, half_masks


# -- the score of a Gaussian mixture ---------------------------------------------------------
def _mixture() -> D.MixtureSameFamily:
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
    return D.MixtureSameFamily(D.Categorical(torch.tensor([0.3, 0.3, 0.4])),
                               D.Independent(D.Normal(means, 0.5), 1))


@pytest.mark.slow
def test_a_dae_trained_at_small_sigma_estimates_the_score_of_the_data():
    # r*(x̃) = x̃ + σ²∇log p_σ(x̃) (Tweedie), so (r(x) − x)/σ² → ∇log p(x) as σ → 0.
    # σ = 0.15 is small beside the components' 0.5; skip=true: the net learns r(x) − x.
    torch.manual_seed(0)
    mixture, sigma = _mixture(), 0.15
    net = create_model("dae", in_shape=[2], hidden=64, latent_dim=64, sigma_min=sigma,
                       sigma_max=sigma, mask_prob=0.0, skip=True)
    steps = 1000
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        loss = net.loss(mixture.sample((512,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    x = mixture.sample((4000,))
    log_p = mixture.log_prob(x)
    x = x[log_p > log_p.median()]  # points of high density
    x.requires_grad_(True)
    true = torch.autograd.grad(mixture.log_prob(x).sum(), x)[0]  # closed form ∇ log p
    x = x.detach()
    with torch.no_grad():
        estimate = net.score(x, sigma)
    relative = (estimate - true).norm() / true.norm()
    steep = true.norm(dim=1) > 1  # a direction needs a gradient (not a mode's top)
    cosine = torch.nn.functional.cosine_similarity(estimate[steep], true[steep]).mean()
    assert steep.sum() > 500
    assert cosine > 0.95, float(cosine)
    assert relative < 0.2, float(relative)
    # an untrained DAE does not: the test can fail
    untrained = create_model("dae", in_shape=[2], hidden=64, latent_dim=64, sigma_min=sigma,
                             sigma_max=sigma, mask_prob=0.0, skip=True)
    with torch.no_grad():
        assert (untrained.score(x, sigma) - true).norm() / true.norm() > 0.5


# -- corruptions -------------------------------------------------------------------------------
def test_gaussian_corruption_has_the_configured_sigma_per_image():
    x = torch.rand(4, 1, 64, 64, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.3, 0.5, 0.0], dtype=torch.float64)
    noise = gaussian_corruption(x, sigma, generator=torch.Generator().manual_seed(0)) - x
    std = noise.flatten(1).std(1)
    # 4096 draws each: the std's standard error is σ/√(2·4096) ≈ 1.1 % of σ
    torch.testing.assert_close(std[:3], sigma[:3], rtol=0.05, atol=0)
    assert std[3] == 0
    assert noise.flatten(1).mean(1).abs().max() < 5 * 0.5 / 64


def test_the_network_draws_sigma_in_its_range_and_masks_or_noises_as_configured():
    net = create_model("dae", sigma_min=0.2, sigma_max=0.4, mask_prob=0.5, masks="halves")
    g = torch.Generator().manual_seed(1)
    sigmas = net.draw_sigma(20_000, generator=g)
    assert sigmas.min() >= 0.2 and sigmas.max() <= 0.4
    assert abs(float(sigmas.mean()) - 0.3) < 0.003  # U[0.2, 0.4]: mean 0.3, se 0.0004
    x = torch.rand(2000, 1, 8, 8) * 0.5 + 0.25
    corrupted, mask = net.corrupt(x, generator=g)
    masked = (mask == 0).flatten(1).any(1)
    assert abs(float(masked.float().mean()) - 0.5) < 0.05  # mask_prob
    # masked images: exactly half hidden, hidden pixels 0, the rest untouched
    assert ((1 - mask[masked]).flatten(1).mean(1) == 0.5).all()
    torch.testing.assert_close(corrupted[masked], (x * mask)[masked], rtol=0, atol=0)
    # the others: noise on every pixel, of variance E[σ²] = (0.4³ − 0.2³)/(3·0.2) on average
    noise = (corrupted - x)[~masked].flatten(1)
    assert (noise != 0).all()
    assert abs(float(noise.pow(2).mean()) - 0.056 / 0.6) < 0.002
    assert (noise.std(1) > 0.2 * 0.6).all() and (noise.std(1) < 0.4 * 1.4).all()
    assert net.corrupt(x, generator=torch.Generator().manual_seed(5))[0].equal(
        net.corrupt(x, generator=torch.Generator().manual_seed(5))[0])


@pytest.mark.parametrize(("low", "high"), [(0.1, 0.5), (0.3, 0.3), (0.05, 0.9)])
def test_box_masks_hide_the_configured_share_in_one_rectangle(low, high):
    h, w = 8, 12
    masks = box_masks(5000, (h, w), min_fraction=low, max_fraction=high,
                      generator=torch.Generator().manual_seed(2))
    assert masks.shape == (5000, 1, h, w) and set(masks.unique().tolist()) <= {0.0, 1.0}
    hidden = 1 - masks[:, 0]
    share = hidden.flatten(1).mean(1)
    slack = max(h, w) / 2 / (h * w)  # whole sides: within max(H, W)/2 pixels of f·H·W
    assert share.min() >= low - slack and share.max() <= high + slack
    assert abs(float(share.mean()) - (low + high) / 2) < slack / 2
    # one rectangle: the hidden pixels fill the box spanned by their rows and columns
    rows, cols = hidden.amax(2), hidden.amax(1)  # (n, H), (n, W)
    torch.testing.assert_close(hidden.sum((1, 2)), rows.sum(1) * cols.sum(1))


def test_half_masks_hide_one_of_four_halves():
    masks = half_masks(4000, (8, 6), generator=torch.Generator().manual_seed(3))[:, 0]
    hidden = 1 - masks
    assert (hidden.flatten(1).mean(1) == 0.5).all()
    top = hidden[:, :4].flatten(1).all(1)
    bottom = hidden[:, 4:].flatten(1).all(1)
    left = hidden[:, :, :3].flatten(1).all(1)
    right = hidden[:, :, 3:].flatten(1).all(1)
    sides = torch.stack([top, bottom, left, right]).float()
    assert (sides.sum(0) == 1).all()  # exactly one half each
    assert (sides.mean(1) - 0.25).abs().max() < 0.03


def test_a_hidden_pixel_never_reaches_the_network():
    torch.manual_seed(0)
    net = create_model("dae", hidden=16, latent_dim=4).eval()
    x = torch.rand(3, 1, 8, 8)
    mask = torch.ones(3, 1, 8, 8)
    mask[:, :, 4:] = 0
    changed = x.clone()
    changed[:, :, 4:] = torch.rand(3, 1, 4, 8)
    torch.testing.assert_close(net(x, mask), net(changed, mask), rtol=0, atol=0)
    assert not net(x, mask).equal(net(x))  # the mask itself is an input
    torch.testing.assert_close(net(x), net(x, torch.ones(1, 1, 8, 8)))


def test_bad_settings_are_refused():
    with pytest.raises(UsageError, match="sigma_min <= sigma_max"):
        create_model("dae", sigma_min=0.5, sigma_max=0.1)
    with pytest.raises(UsageError, match="needs images"):
        create_model("dae", in_shape=[2])
    with pytest.raises(UsageError, match="divisible by 4"):
        create_model("dae", arch="conv", in_shape=[1, 6, 6])
    with pytest.raises(ValueError, match=r"mask_prob=1.5: must be a number in \[0, 1\]"):
        create_model("dae", mask_prob=1.5)


def test_the_loss_is_the_mean_squared_error_of_the_reconstruction():
    torch.manual_seed(0)
    net = create_model("dae", arch="conv", hidden=16, latent_dim=8)
    x = torch.rand(5, 1, 8, 8)
    corrupted, mask = net.corrupt(x, generator=torch.Generator().manual_seed(4))
    expected = ((net(corrupted, mask) - x) ** 2).mean()
    torch.testing.assert_close(net.loss(x, generator=torch.Generator().manual_seed(4)), expected)
    torch.testing.assert_close(denoising_loss(x, x), torch.zeros(()))


# -- metrics -------------------------------------------------------------------------------------
def test_psnr_is_ten_log10_of_one_over_the_mse_per_image():
    torch.manual_seed(0)
    target = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    images = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    per_image = [10 * math.log10(1 / float(((a - b) ** 2).mean()))
                 for a, b in zip(images, target, strict=True)]
    assert float(psnr(images, target)) == pytest.approx(sum(per_image) / 6, rel=1e-6)


def test_inpainting_metrics_against_a_plain_mean_and_scikit_learn_neighbours():
    from sklearn.neighbors import NearestNeighbors

    torch.manual_seed(5)
    train, images = torch.rand(40, 1, 8, 8), torch.rand(6, 1, 8, 8)
    module = LitDAE(net=create_model("dae", hidden=16, latent_dim=4))
    module._train_images = train
    out = module.inpainting_metrics(images)
    # nearest on the visible (upper) half, then the lower halves compared
    index = NearestNeighbors(n_neighbors=1).fit(train[:, :, :4].flatten(1).numpy())
    nearest = index.kneighbors(images[:, :, :4].flatten(1).numpy())[1][:, 0]
    expected_nearest = ((train[nearest][:, :, 4:] - images[:, :, 4:]) ** 2).mean()
    expected_mean = ((train[:, :, 4:].mean(0) - images[:, :, 4:]) ** 2).mean()
    torch.testing.assert_close(out["inpaint_mse_nearest"], expected_nearest)
    torch.testing.assert_close(out["inpaint_mse_mean_fill"], expected_mean)
    mask = torch.ones(1, 1, 8, 1)
    mask[:, :, 4:] = 0
    fill = module.net(images * mask, mask.expand_as(images)).clamp(0, 1)
    torch.testing.assert_close(out["inpaint_mse"], ((fill - images)[:, :, 4:] ** 2).mean())


# -- end to end ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_and_test_write_psnr_inpainting_and_pictures(make_cfg, tmp_path):
    from mlnotes_zoo.train import main

    cfg = make_cfg("model=dae", "model.net.hidden=32", "model.net.latent_dim=8",
                   "trainer.max_epochs=2")
    main(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    for sigma in ("0.1", "0.3", "0.5"):
        for key in (f"test/psnr_sigma{sigma}", f"test/psnr_noisy_sigma{sigma}"):
            assert key in metrics and math.isfinite(metrics[key]), key
    for key in ("test/inpaint_mse", "test/inpaint_mse_mean_fill", "test/inpaint_mse_nearest"):
        assert key in metrics and 0 <= metrics[key] < 1, key
    assert metrics["test/psnr_noisy_sigma0.1"] > metrics["test/psnr_noisy_sigma0.5"]
    pictures = {p.stem for p in (tmp_path / "pictures").glob("*.png")}
    assert {"denoising", "inpainting"} <= pictures
