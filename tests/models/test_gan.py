"""GAN networks: shapes on the data sizes of the zoo, ranges, checks, independence of the
critic's examples (which the gradient penalty relies on).

GAN losses against independent computations: torch.distributions, per-example autograd
Jacobians, and a linear critic whose gradient penalty has a closed form.

The feature classifier: trained once (seeded, cached), accurate; torchmetrics' FID in its
feature space against the Fréchet distance computed with scipy; class coverage.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torch.distributions import Bernoulli

from mlnotes_zoo import create_model
from mlnotes_zoo.data.digits import DigitsDataModule
from mlnotes_zoo.models.gan import (
    GAN,
    DownBlock,
    UpBlock,
    critic_loss,
    discriminator_loss,
    gradient_penalty,
    interpolate,
    non_saturating_generator_loss,
    wasserstein_generator_loss,
)
from mlnotes_zoo.models.gan import fid_classifier as dc


@pytest.mark.parametrize(("name", "in_shape", "num_stages"), [
    ("dcgan", (1, 8, 8), 2), ("wgan_gp", (1, 28, 28), 2), ("dcgan", (3, 32, 32), 3),
    ("dcgan", (1, 28, 28), 3),  # 28 -> 14 -> 7 -> 3: the odd step takes a 3×3 kernel
])
def test_shapes_range_and_stages(name, in_shape, num_stages):
    torch.manual_seed(0)
    net = create_model(name, in_shape=in_shape, num_stages=num_stages, latent_dim=16,
                       gen_width=8, disc_width=8)
    images, logits = net(net.example_input(3))
    assert images.shape == (3, *in_shape) and logits.shape == (3,)
    assert images.min() >= 0 and images.max() <= 1
    assert net.sample(5).shape == (5, *in_shape)
    blocks = [type(m) for m in net.modules() if isinstance(m, GAN.repeated_blocks)]
    # G's last up-sampling conv emits the image itself (DCGAN), so it is no UpBlock
    assert blocks.count(UpBlock) == num_stages - 1 and blocks.count(DownBlock) == num_stages


def test_bad_sizes_and_batchnorm_critic_are_rejected():
    with pytest.raises(ValueError, match="num_stages"):
        create_model("dcgan", in_shape=(1, 28, 28), num_stages=5)  # 28 / 2^5 < 1
    with pytest.raises(ValueError, match="norm"):
        create_model("wgan_gp", disc_norm="batch")
    with pytest.raises(ValueError, match="gen_norm"):
        create_model("dcgan", gen_norm="instance")


def test_wgan_critic_scores_each_example_independently_in_train_mode():
    # d score_i / d x_j = 0 for i ≠ j: the per-example gradient in the penalty is then the
    # gradient of Σ_i D(x_i). A BatchNorm critic (DCGAN) mixes the batch and fails this.
    torch.manual_seed(0)
    x = torch.rand(3, 1, 8, 8)
    for name, independent in (("wgan_gp", True), ("dcgan", False)):
        critic = create_model(name, disc_width=8).discriminator.train()
        jac = torch.autograd.functional.jacobian(critic, x).flatten(2).abs().sum(-1)  # (3, 3)
        off_diagonal = jac[~torch.eye(3, dtype=torch.bool)]
        assert (off_diagonal.max() < 1e-6) == independent, name
        assert jac.diagonal().min() > 0


def test_sampling_is_reproducible_with_a_generator():
    net = create_model("dcgan").eval()
    a = net.sample(4, generator=torch.Generator().manual_seed(5))
    b = net.sample(4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)


def test_labml_mnist_dcgan_layout_by_configuration():
    # scripts/benchmarks/gan.py compares against labml-nn's MNIST DCGAN layer for layer
    net = create_model("dcgan", in_shape=(1, 28, 28), latent_dim=100, gen_width=256,
                       disc_width=256, num_stages=3)
    convs = [(tuple(m.weight.shape), m.kernel_size, m.padding) for m in net.modules()
             if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert convs == [((1024, 512, 3, 3), (3, 3), (0, 0)), ((512, 256, 4, 4), (4, 4), (1, 1)),
                     ((256, 1, 4, 4), (4, 4), (1, 1)),  # G: 3 -> 7 -> 14 -> 28
                     ((256, 1, 4, 4), (4, 4), (1, 1)), ((512, 256, 4, 4), (4, 4), (1, 1)),
                     ((1024, 512, 3, 3), (3, 3), (0, 0))]  # D: 28 -> 14 -> 7 -> 3
    assert net.generator.seed_shape == (1024, 3, 3)
    assert net.discriminator.head.in_features == 1024 * 3 * 3


# -- the objective ------------------------------------------------------------------------
def test_discriminator_and_generator_losses_match_bernoulli_log_likelihoods():
    torch.manual_seed(0)
    real_logits, fake_logits = torch.randn(7) * 3, torch.randn(7) * 3
    expected = (-Bernoulli(logits=real_logits).log_prob(torch.ones(7)).mean()
                - Bernoulli(logits=fake_logits).log_prob(torch.zeros(7)).mean())
    torch.testing.assert_close(discriminator_loss(real_logits, fake_logits), expected)
    torch.testing.assert_close(non_saturating_generator_loss(fake_logits),
                               -Bernoulli(logits=fake_logits).log_prob(torch.ones(7)).mean())


def test_non_saturating_loss_keeps_its_gradient_where_the_minimax_loss_vanishes():
    # D confidently rejects the fakes (logit −10): log(1 − σ(a)) is flat there, −log σ(a) is not.
    logits = torch.full((4,), -10.0, requires_grad=True)
    (grad_ns,) = torch.autograd.grad(non_saturating_generator_loss(logits), logits)
    minimax = torch.log1p(-torch.sigmoid(logits)).mean()  # the generator minimises this
    (grad_mm,) = torch.autograd.grad(minimax, logits)
    assert grad_ns.abs().min() > 0.2 and grad_mm.abs().max() < 1e-4


def test_wasserstein_losses():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0, 4.0])
    assert critic_loss(real, fake).item() == pytest.approx(1.0 - 2.0)
    assert wasserstein_generator_loss(fake).item() == pytest.approx(-1.0)


def test_interpolates_lie_on_the_segments_with_one_epsilon_per_example():
    torch.manual_seed(1)
    real, fake = torch.randn(5, 2, 3, 3), torch.randn(5, 2, 3, 3)
    x_hat = interpolate(real, fake)
    eps = ((x_hat - fake) / (real - fake)).flatten(1)  # (B, D): constant along each row
    torch.testing.assert_close(eps, eps[:, :1].expand_as(eps))
    assert (eps >= 0).all() and (eps <= 1).all() and eps[:, 0].std() > 0


def test_gradient_penalty_matches_per_example_autograd_jacobians():
    torch.manual_seed(2)
    critic = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                           nn.Linear(4 * 5 * 5, 1), nn.Flatten(0))
    x_hat = torch.randn(6, 1, 5, 5)
    norms = torch.stack([
        torch.autograd.functional.jacobian(lambda x: critic(x.unsqueeze(0))[0], x).norm()
        for x in x_hat
    ])  # ‖∇_x D(x)‖₂ of each example on its own
    expected = ((norms - 1) ** 2).mean()
    torch.testing.assert_close(gradient_penalty(critic, x_hat), expected)


def test_gradient_penalty_of_a_linear_critic_and_its_parameter_gradient():
    # D(x) = w·x + b: ∇_x D = w everywhere, so GP = (‖w‖ − 1)² and ∂GP/∂w = 2(‖w‖ − 1) w/‖w‖;
    # the second needs create_graph=True (the penalty must train the critic).
    torch.manual_seed(3)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1), nn.Flatten(0))
    w = critic[1].weight
    gp = gradient_penalty(critic, torch.randn(4, 3, 2, 2))
    norm = w.detach().norm()
    assert gp.item() == pytest.approx(((norm - 1) ** 2).item(), rel=1e-5)
    gp.backward()
    torch.testing.assert_close(w.grad, 2 * (norm - 1) * w.detach() / norm)
    assert critic[1].bias.grad is None or not critic[1].bias.grad.abs().sum()


# -- the FID feature classifier -----------------------------------------------------------
STEPS = 400  # enough for > 90 % on the digits; the configs use more


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule()
    dm.setup()
    return {name: ds.tensors for name, ds in dm.splits.items()}


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    cache = tmp_path_factory.mktemp("classifiers")
    rng = torch.get_rng_state()
    model, acc = dc.load_or_train_classifier(cache, digits["train"], digits["test"], steps=STEPS)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched
    return cache, model, acc


def test_classifier_is_accurate_and_cached(trained, digits, monkeypatch):
    cache, model, acc = trained
    assert acc > 0.9
    assert acc == pytest.approx(dc.classifier_accuracy(model, *digits["test"]))
    assert len(list(cache.glob("classifier-1x8x8-*.pt"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(dc, "train_classifier", no_training)
    rng = torch.get_rng_state()
    again, acc_again = dc.load_or_train_classifier(cache, digits["train"], digits["test"],
                                                   steps=STEPS)
    assert torch.equal(torch.get_rng_state(), rng)  # loading leaves the random stream alone too
    assert acc_again == acc
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # other data -> another key -> trains (here: the stub raises)
    other = (digits["train"][0].flip(-1), digits["train"][1])
    with pytest.raises(AssertionError, match="retrained"):
        dc.load_or_train_classifier(cache, other, digits["test"], steps=STEPS)


def _frechet_scipy(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def test_torchmetrics_fid_in_classifier_space_matches_scipy(trained, digits):
    _, model, _ = trained
    real, other = digits["test"][0], digits["train"][0]
    fake = (other + 0.3 * torch.rand_like(other)).clamp(0, 1)
    for images in (other, fake):
        fid = dc.classifier_fid(model)
        fid.update(real, real=True)
        fid.update(images, real=False)
        with torch.no_grad():
            expected = _frechet_scipy(model.features(real).double().numpy(),
                                      model.features(images).double().numpy())
        assert fid.compute().item() == pytest.approx(expected, rel=2e-3, abs=1e-2)
    # real train vs test (the floor) is far closer than noise
    floor, noise = dc.classifier_fid(model), dc.classifier_fid(model)
    for fid, images in ((floor, other), (noise, torch.rand_like(other))):
        fid.update(real, real=True)
        fid.update(images, real=False)
    assert 10 * floor.compute() < noise.compute()


def test_class_coverage():
    uniform = torch.arange(100) % 10
    assert dc.class_coverage(uniform, 10).item() == 1.0
    assert dc.class_coverage(uniform % 5, 10).item() == 0.5
    # three stray predictions of class 9 among 100 do not count as covering it (fair share 10)
    preds = torch.cat([torch.arange(97) % 9, torch.full((3,), 9)])
    assert dc.class_coverage(preds, 10).item() == pytest.approx(0.9)
    assert dc.class_coverage(preds, 10, min_share=0.0).item() == 1.0
