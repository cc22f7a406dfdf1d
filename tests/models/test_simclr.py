"""SimCLR network and the batched view augmentation."""

from __future__ import annotations

import pytest
import torch

from mlnotes_zoo import create_model
from mlnotes_zoo.data.augment import ContrastiveAugment
from mlnotes_zoo.models.simclr import ResidualBlock, SimCLR, SupCon

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
