"""GLIDE-style inpainting model and RePaint's resampling, against independent computations.

- the conditioning channels are exactly the visible pixels (0 elsewhere) and the mask: the
  U-Net's first conv receives them, and the hidden pixels of the input never reach it;
- every fill equals the input on the visible pixels (GLIDE's sampler and RePaint);
- RePaint with one resampling (or no jump) is the plain replacement sampler of
  ``DDPM.inpaint``, draw for draw; its walk and its jump back (q(x_s | x_t), Monte Carlo);
- the baselines and the masked error against scikit-learn's nearest neighbours and plain
  loops; the masks against hand-written ones;
- a tiny ``model=ddpm_inpaint`` run writes the metrics and the picture.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mlnotes_zoo import create_model
from mlnotes_zoo.models.diffusion import (
    DDPM,
    InpaintDDPM,
    conditioning,
    fixed_mask,
    masked_mse,
    mean_fill,
    nearest_fill,
    random_masks,
    renoise,
    repaint,
    repaint_schedule,
)

TINY = dict(widths=[8, 8], groups=4, heads=2, timesteps=20, schedule="cosine")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 17, (n, 1, 8, 8), generator=g) / 16.0) * 2 - 1  # the digits' grid


def _tiny(name: str = "ddpm_inpaint", **kwargs):
    torch.manual_seed(0)
    return create_model(name, **{**TINY, **kwargs}).eval()


# -- masks -------------------------------------------------------------------------------------
def test_fixed_masks_are_the_hand_written_ones():
    lower = np.ones((8, 8))
    lower[4:] = 0
    box = np.ones((8, 8))
    box[2:6, 2:6] = 0
    left = np.ones((8, 8))
    left[:, :4] = 0
    np.testing.assert_array_equal(fixed_mask("lower_half", 8, 8)[0, 0].numpy(), lower)
    np.testing.assert_array_equal(fixed_mask("upper_half", 8, 8)[0, 0].numpy(), 1 - lower)
    np.testing.assert_array_equal(fixed_mask("left_half", 8, 8)[0, 0].numpy(), left)
    np.testing.assert_array_equal(fixed_mask("right_half", 8, 8)[0, 0].numpy(), 1 - left)
    np.testing.assert_array_equal(fixed_mask("center_box", 8, 8)[0, 0].numpy(), box)
    with pytest.raises(ValueError, match="kind='diagonal' is not one of"):
        fixed_mask("diagonal", 8, 8)


def test_random_masks_hide_one_rectangle_each_and_halves_at_their_share():
    masks = random_masks(4000, 8, 8, half_share=0.3, generator=torch.Generator().manual_seed(1))
    halves = [fixed_mask(k, 8, 8)[0, 0] for k in ("lower_half", "upper_half", "left_half",
                                                  "right_half")]
    n_half = 0
    for mask in masks[:, 0]:
        hidden = (mask == 0).numpy()
        rows, cols = np.nonzero(hidden)
        assert len(rows) > 0
        # one filled rectangle: the bounding box of the hidden pixels is all hidden
        assert hidden[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        n_half += any(torch.equal(mask, h) for h in halves)
    # the halves drawn as halves, plus the rectangles that happen to be one: sides 4 × 8 (or
    # 8 × 4), each 1/8 · 1/8, at 2 of their 5 positions
    expected = 0.3 + 0.7 * 2 * (1 / 8 * 1 / 8 * 2 / 5)
    assert abs(n_half / 4000 - expected) < 0.03, (n_half, expected)  # 4 standard errors


# -- the conditioning channels -----------------------------------------------------------------
def test_conditioning_channels_are_the_visible_pixels_and_the_mask():
    known = _images(3)
    mask = random_masks(3, 8, 8, generator=torch.Generator().manual_seed(2))
    cond = conditioning(known, mask)
    assert cond.shape == (3, 2, 8, 8)
    for b in range(3):  # pixel by pixel
        for i in range(8):
            for j in range(8):
                visible = bool(mask[b, 0, i, j])
                assert cond[b, 0, i, j] == (known[b, 0, i, j] if visible else 0)
                assert cond[b, 1, i, j] == float(visible)


def test_the_unet_sees_x_t_the_visible_pixels_and_the_mask_and_nothing_hidden():
    net = _tiny()
    assert isinstance(net, InpaintDDPM) and net.unet.stem.in_channels == 3
    known, x = _images(2, 3), torch.randn(2, 1, 8, 8)
    t = torch.tensor([3, 17])
    mask = fixed_mask("center_box", 8, 8)
    seen = []
    hook = net.unet.stem.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    out = net(x, t, known=known, mask=mask)
    hook.remove()
    expected = torch.cat([x, torch.where(mask.bool(), known, 0.0), mask.expand(2, 1, 8, 8)], 1)
    assert torch.equal(seen[0], expected)
    # other hidden pixels: the same output; another visible pixel: a different one
    other = known.clone()
    other[:, :, 2:6, 2:6] = torch.rand(2, 1, 4, 4)
    assert torch.equal(net(x, t, known=other, mask=mask), out)
    other = known.clone()
    other[:, :, 0, 0] += 0.5
    assert not torch.allclose(net(x, t, known=other, mask=mask), out)
    # without conditioning nothing is visible: the all-zero channels
    torch.testing.assert_close(net(x, t), net(x, t, known=torch.randn(2, 1, 8, 8),
                                                 mask=torch.zeros(1, 1, 8, 8)))
    with pytest.raises(ValueError, match=r"mask must be .* shape \(2 or 1, 1, 8, 8\)"):
        net(x, t, known=known, mask=torch.ones(2, 8, 8))


def test_training_loss_is_l_simple_with_the_drawn_masks():
    net = _tiny()
    x0 = _images(4, 4)
    g = torch.Generator().manual_seed(7)
    loss = net.loss(x0, generator=g)
    # the same draws, by hand: masks, then t, then ε
    g = torch.Generator().manual_seed(7)
    mask = random_masks(4, 8, 8, generator=g)
    t = torch.randint(0, net.timesteps, (4,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    a = net.alpha_bar[t].float().view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    expected = ((net(xt, t, known=x0, mask=mask) - eps) ** 2).mean()
    torch.testing.assert_close(loss, expected)


# -- sampling ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lower_half", "center_box"])
def test_fills_equal_the_input_on_the_visible_pixels(kind):
    known, mask = _images(3, 5), fixed_mask(kind, 8, 8)
    inpainter, ddpm = _tiny(), _tiny("ddpm")
    for filled in (inpainter.inpaint(known, mask, steps=6, eta=0.5,
                                     generator=torch.Generator().manual_seed(0)),
                   repaint(ddpm, known, mask, steps=6, jump=2, resample=3,
                           generator=torch.Generator().manual_seed(0))):
        assert torch.equal(filled * mask, known * mask)
        hidden = (1 - mask).bool().expand_as(known)
        assert (filled - known)[hidden].abs().max() > 0.1  # untrained: not the truth


def test_an_oracle_inpainter_fills_in_the_truth():
    truth, mask = _images(3, 6), fixed_mask("lower_half", 8, 8)

    class Oracle(InpaintDDPM):  # x̂_0 = the truth whatever it is shown
        def predict_given(self, xt, t, known, mask, *, clip=True):
            a = self.alpha_bar[t].view(-1, 1, 1, 1).to(xt.dtype)
            return (xt - a.sqrt() * truth) / (1 - a).sqrt(), truth.to(xt.dtype)

    oracle = Oracle(**TINY)
    torch.testing.assert_close(oracle.inpaint(truth * mask, mask, steps=8), truth,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_repaint_without_resampling_is_the_replacement_sampler(eta):
    net, known, mask = _tiny("ddpm"), _images(3, 8), fixed_mask("lower_half", 8, 8)
    plain = net.inpaint(known, mask, steps=7, eta=eta, generator=torch.Generator().manual_seed(3))
    for jump, resample in ((0, 1), (3, 1), (0, 4)):
        ours = repaint(net, known, mask, steps=7, eta=eta, jump=jump, resample=resample,
                       generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(ours, plain, rtol=0, atol=1e-6)
    resampled = repaint(net, known, mask, steps=7, eta=eta, jump=2, resample=2,
                        generator=torch.Generator().manual_seed(3))
    assert (resampled - plain).abs().max() > 1e-3


def test_repaint_walk_goes_back_jump_steps_resample_times():
    # written out: 4 steps, jump 2, resample 2 (RePaint's get_schedule_jump on the states)
    assert repaint_schedule(4, 2, 2) == [0, 1, 2, 1, 0, 1, 2, 3, 4, 3, 2, 3, 4]
    assert repaint_schedule(3, 0, 5) == repaint_schedule(3, 2, 1) == [0, 1, 2, 3]
    for steps, jump, resample in ((50, 5, 5), (10, 3, 2), (7, 7, 3)):
        path = repaint_schedule(steps, jump, resample)
        moves = np.diff(path)
        assert path[0] == 0 and path[-1] == steps and set(moves) <= {-1, 1}
        down = int((moves == 1).sum())
        assert down == steps + (resample - 1) * jump * (steps // jump)


def test_the_jump_back_draws_q_of_the_noisier_step():
    # x_t ~ q(x_t | x_0), then q(x_s | x_t): x_s must have q(x_s | x_0)'s moments
    torch.manual_seed(9)
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-3, 0.1, 50, dtype=torch.float64), 0)
    x0 = torch.tensor([-1.0, 0.25, 1.0], dtype=torch.float64)
    n, t, s = 200_000, 10, 30
    noise = torch.randn(2, n, 3, dtype=torch.float64)
    xt = alpha_bar[t].sqrt() * x0 + (1 - alpha_bar[t]).sqrt() * noise[0]
    xs = renoise(xt, alpha_bar[t], alpha_bar[s], noise[1])
    var = 1 - alpha_bar[s]
    assert (xs.mean(0) - alpha_bar[s].sqrt() * x0).abs().max() < 5 * math.sqrt(var / n)
    assert (xs.var(0) - var).abs().max() < 5 * var * math.sqrt(2 / n)


# -- baselines and the error -----------------------------------------------------------------
def test_baselines_and_masked_error_against_independent_computations():
    from sklearn.neighbors import NearestNeighbors

    torch.manual_seed(5)
    train, images = torch.rand(60, 1, 8, 8), torch.rand(9, 1, 8, 8)
    mask = fixed_mask("center_box", 8, 8)
    visible = mask.flatten().bool().numpy()
    flat_train, flat_images = train.flatten(1).numpy(), images.flatten(1).numpy()
    index = NearestNeighbors(n_neighbors=1).fit(flat_train[:, visible])
    nearest = index.kneighbors(flat_images[:, visible])[1][:, 0]
    expected = flat_images.copy()
    expected[:, ~visible] = flat_train[nearest][:, ~visible]
    np.testing.assert_allclose(nearest_fill(train, images, mask).flatten(1).numpy(), expected)
    expected[:, ~visible] = flat_train.mean(0)[~visible]
    filled = mean_fill(train, images, mask)
    np.testing.assert_allclose(filled.flatten(1).numpy(), expected, rtol=1e-6)
    # the error per hidden pixel, by a loop
    total, count = 0.0, 0
    for b in range(9):
        for p in np.nonzero(~visible)[0]:
            total += float(filled.flatten(1)[b, p] - images.flatten(1)[b, p]) ** 2
            count += 1
    assert masked_mse(filled, images, mask).item() == pytest.approx(total / count, rel=1e-5)


# -- end to end --------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_writes_the_inpainting_metrics_and_picture(make_cfg, tmp_path):
    from mlnotes_zoo.train import main

    cfg = make_cfg("model=ddpm_inpaint", "model.net.widths=[8,8]", "model.net.groups=4",
                   "model.net.heads=2", "model.net.timesteps=30", "model.net.schedule=cosine",
                   "model.sample_steps=4", "model.inpaint_samples=2")
    main(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    for kind in ("lower_half", "center_box"):
        for suffix in ("", "_single", "_mean_fill", "_nearest"):
            key = f"test/inpaint_mse_{kind}{suffix}"
            assert key in metrics and math.isfinite(metrics[key]), key
    assert "test/fid" not in metrics  # no classifier trained for this model
    assert (tmp_path / "pictures" / "inpainting.png").is_file()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["net"]["name"] == "ddpm_inpaint"
    assert any(k.startswith("ema.") for k in ckpt["state_dict"])


@pytest.mark.slow
def test_ddpm_reports_repaint_beside_the_plain_fills(make_cfg, tmp_path):
    from mlnotes_zoo.train import main

    cfg = make_cfg("model=ddpm", "model.net.widths=[8,8]", "model.net.groups=4",
                   "model.net.heads=2", "model.net.timesteps=30", "model.net.schedule=cosine",
                   "model.sample_steps=4", "model.classifier_steps=30",
                   "model.fid_max_samples=40", "model.inpaint_samples=2",
                   "model.inpaint_jump=2", "model.inpaint_resample=2",
                   f"model.classifier_dir={tmp_path / 'cls'}")
    main(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    for key in ("test/inpaint_mse", "test/inpaint_mse_repaint", "test/inpaint_mse_repaint_single"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["test/inpaint_mse_repaint"] != metrics["test/inpaint_mse"]


def test_ddpm_inpaint_is_a_ddpm_with_three_input_channels():
    net = _tiny()
    assert isinstance(net, DDPM) and net.num_classes == 0
    assert net(*net.example_input(2)).shape == (2, 1, 8, 8)
