"""GAN networks: shapes on the data sizes of the zoo, ranges, checks, independence of the
critic's examples (which the gradient penalty relies on)."""

from __future__ import annotations

import pytest
import torch

from mlnotes_zoo import create_model
from mlnotes_zoo.models.gan import GAN, DownBlock, UpBlock


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
