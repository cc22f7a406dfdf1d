"""Reconstruction grids: inputs in odd rows, their reconstructions right below."""

from __future__ import annotations

import pytest
import torch
from torchvision.utils import make_grid

from mlnotes_zoo import create_model
from mlnotes_zoo.lit.base import paired_rows_grid
from mlnotes_zoo.lit.vae import LitVAE
from mlnotes_zoo.lit.vqvae import LitVQVAE


def test_paired_rows_equal_make_grid_of_the_rows_in_order():
    inputs, outputs = torch.rand(16, 1, 8, 8), torch.rand(16, 1, 8, 8)
    expected = make_grid(torch.cat([inputs[:8], outputs[:8], inputs[8:], outputs[8:]]), nrow=8,
                         padding=1, pad_value=0.5)
    torch.testing.assert_close(paired_rows_grid(inputs, outputs), expected)
    few = make_grid(torch.cat([inputs[:4], outputs[:4]]), nrow=4, padding=1, pad_value=0.5)
    torch.testing.assert_close(paired_rows_grid(inputs[:4], outputs[:4]), few)
    # a remainder short of a full row is dropped
    torch.testing.assert_close(paired_rows_grid(inputs[:11], outputs[:11]),
                               paired_rows_grid(inputs[:8], outputs[:8]))


@pytest.mark.parametrize("num_pictures", [4, 12])
@pytest.mark.parametrize("lit, name", [(LitVAE, "vae"), (LitVQVAE, "vqvae")])
def test_reconstruction_pictures_for_fewer_or_more_than_a_row(lit, name, num_pictures):
    module = lit(net=create_model(name), num_pictures=num_pictures).eval()
    x = create_model(name).example_input(16).clamp(0, 1)
    grid = module.pictures((x, torch.zeros(16, dtype=torch.long)))["reconstructions"]
    pairs = min(num_pictures, 8)
    assert grid.shape == (3, 2 * (8 + 1) + 1, pairs * (8 + 1) + 1)
