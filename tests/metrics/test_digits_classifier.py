"""The feature classifier: trained once (seeded, cached), accurate; torchmetrics' FID in its
feature space against the Fréchet distance computed with scipy; class coverage."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from mlnotes_zoo.data.digits import DigitsDataModule
from mlnotes_zoo.metrics import digits_classifier as dc

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
