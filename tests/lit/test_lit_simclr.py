"""LitSimCLR: frozen-feature evaluation helpers and train.py end to end (simclr, supcon)."""

from __future__ import annotations

import json

import pytest
import torch

from mlnotes_zoo.lit.simclr import few_labels_per_class, knn_accuracy, probe_accuracy
from mlnotes_zoo.train import main


def _knn_reference(train_f, train_y, test_f, test_y, k):
    """Cosine k-NN majority vote written out (ties go to the smallest label, as sklearn)."""
    a = torch.nn.functional.normalize(test_f.double(), dim=1)
    b = torch.nn.functional.normalize(train_f.double(), dim=1)
    nearest = (a @ b.T).topk(k, dim=1).indices  # (M, k)
    votes = torch.stack([torch.bincount(train_y[row], minlength=int(train_y.max()) + 1)
                         for row in nearest])
    return (votes.argmax(1) == test_y).double().mean().item()


@pytest.mark.parametrize("k", [1, 5])
def test_knn_accuracy_matches_a_written_out_vote(k):
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 6, generator=gen)
    train_y = torch.randint(0, 4, (60,), generator=gen)
    test_y = torch.randint(0, 4, (30,), generator=gen)
    train_f = centres[train_y] + 0.9 * torch.randn(60, 6, generator=gen)
    test_f = centres[test_y] + 0.9 * torch.randn(30, 6, generator=gen)
    expected = _knn_reference(train_f, train_y, test_f, test_y, k)
    assert 0.3 < expected < 1.0  # neither trivial nor hopeless
    assert knn_accuracy(train_f, train_y, test_f, test_y, k) == pytest.approx(expected)


def test_knn_default_k_is_ceil_log_n():
    # two training points of class 0 right next to the query, three of class 1 further away:
    # k = ⌈ln 5⌉ = 2 votes 0, while k = 5 would vote 1
    train_f = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.1, 1.0], [0.2, 1.0]])
    train_y = torch.tensor([0, 0, 1, 1, 1])
    query, label = torch.tensor([[1.0, 0.01]]), torch.tensor([0])
    assert knn_accuracy(train_f, train_y, query, label) == 1.0
    assert knn_accuracy(train_f, train_y, query, label, k=5) == 0.0


def test_probe_separates_separable_features_and_not_noise():
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(200) % 5
    informative = torch.nn.functional.one_hot(y, 5).double() * 3 + torch.randn(200, 5,
                                                                             generator=gen)
    assert probe_accuracy(informative[:100], y[:100], informative[100:], y[100:]) > 0.9
    noise = torch.randn(200, 5, generator=gen)
    assert probe_accuracy(noise[:100], y[:100], noise[100:], y[100:]) < 0.5


def test_few_labels_per_class_picks_that_many_of_each_seeded():
    y = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(2))
    idx = few_labels_per_class(y, 10, seed=0)
    assert len(idx.unique()) == 100
    assert torch.bincount(y[idx], minlength=10).tolist() == [10] * 10
    assert torch.equal(idx, few_labels_per_class(y, 10, seed=0))
    assert not torch.equal(idx, few_labels_per_class(y, 10, seed=1))


SMALL = ["model.net.widths=[8,16]", "model.net.proj_hidden=16", "model.net.proj_dim=8",
         "model.few_shot_draws=2", "trainer.limit_val_batches=2"]


def test_simclr_train_writes_contrastive_and_baseline_metrics(make_cfg, tmp_path):
    metrics = main(make_cfg("model=simclr", "trainer.max_epochs=2", *SMALL))
    expected = {f"test/{prefix}{name}" for prefix in ("", "pixels_", "random_")
                for name in ("knn_acc", "knn_acc_10pc", "probe_acc", "probe_acc_10pc")}
    assert expected | {"test/loss", "test/positive_top1"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in expected)
    # raw digit pixels are a strong baseline: far above chance (0.1) with 10 labels per class
    assert metrics["test/pixels_probe_acc_10pc"] > 0.6
    # so are a random conv encoder's features (features paired with the wrong labels: ~0.1)
    assert metrics["test/random_knn_acc"] > 0.4
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["metrics"] == pytest.approx(metrics)
    assert (tmp_path / "pictures" / "views.png").is_file()
    assert list((tmp_path / "checkpoints").glob("best-epoch*.ckpt"))
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "val/knn_acc" in header


def test_supcon_trains_with_labels(make_cfg):
    metrics = main(make_cfg("model=supcon", *SMALL, "model.baselines=false"))
    assert "test/probe_acc_10pc" in metrics and "test/pixels_probe_acc" not in metrics
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))
