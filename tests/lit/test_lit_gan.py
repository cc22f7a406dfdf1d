"""LitGAN end to end on a shrunk config: metrics, pictures, n_critic, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import open_dict

from mlnotes_zoo import load_checkpoint
from mlnotes_zoo.lit.gan import LitGAN
from mlnotes_zoo.models.gan import GAN
from mlnotes_zoo.train import main

SMALL = ["model.net.gen_width=8", "model.net.disc_width=8", "model.net.latent_dim=8",
         "model.classifier_steps=400", "data.batch_size=32", "logger=none",
         "callbacks.progress_bar=null"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("classifiers")  # one classifier trained for the module


def _steps(ckpt) -> list[int]:
    """Updates made by each optimizer, [generator, discriminator], from their Adam states."""
    return [int(next(iter(o["state"].values()))["step"]) for o in ckpt["optimizer_states"]]


@pytest.mark.parametrize(("name", "n_critic"), [("dcgan", 1), ("wgan_gp", 3)])
def test_fit_reports_fid_floor_coverage_and_counts_updates(make_cfg, tmp_path, classifier_dir,
                                                           name, n_critic):
    metrics = main(make_cfg(f"model={name}", f"model.n_critic={n_critic}", *SMALL,
                            f"model.classifier_dir={classifier_dir}",
                            "trainer.limit_train_batches=7"))
    for key in ("fid", "fid_floor", "class_coverage", "classifier_acc", "loss", "gen_loss"):
        assert f"test/{key}" in metrics
    assert 0 <= metrics["test/class_coverage"] <= 1
    assert metrics["test/classifier_acc"] > 0.9
    # 7 batches of an untrained GAN are far from the data; real train vs test is close
    assert 0 < metrics["test/fid_floor"] < metrics["test/fid"] / 5
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == pytest.approx(metrics)
    for picture in ("samples", "samples_by_class"):
        assert (tmp_path / "pictures" / f"{picture}.png").is_file()

    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert _steps(ckpt) == [7 // n_critic, 7]  # D every batch, G every n_critic-th
    assert ckpt["gan"]["disc_steps"] == 7
    assert "gen_optimizer" not in ckpt["hyper_parameters"]
    net = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert isinstance(net, GAN) and net.latent_dim == 8
    assert not any(k.startswith("_eval") or "classifier" in k for k in ckpt["state_dict"])


def test_generator_update_leaves_discriminator_weights_alone(classifier_dir):
    torch.manual_seed(0)
    lit = LitGAN(net={"name": "wgan_gp", "gen_width": 8, "disc_width": 8}, objective="wasserstein",
                 gp_weight=10.0, n_critic=1, classifier_dir=str(classifier_dir))
    gen_opt, disc_opt = lit.configure_optimizers()
    lit.optimizers = lambda: (_Plain(gen_opt), _Plain(disc_opt))
    lit.manual_backward = lambda loss: loss.backward()
    disc_before = [p.detach().clone() for p in lit.net.discriminator.parameters()]
    gen_before = [p.detach().clone() for p in lit.net.generator.parameters()]
    disc_opt_step = disc_opt.step
    disc_opt.step = lambda: None  # freeze D: any change of D now would come from G's update
    out = lit.training_step((torch.rand(16, 1, 8, 8), torch.zeros(16)), 0)
    disc_opt.step = disc_opt_step
    assert {"loss", "gen_loss", "gradient_penalty", "wasserstein"} <= set(out)
    for a, p in zip(disc_before, lit.net.discriminator.parameters(), strict=True):
        assert torch.equal(a, p) and p.requires_grad
    assert any(not torch.equal(a, p) for a, p in zip(gen_before, lit.net.generator.parameters(),
                                                      strict=True))


class _Plain:
    """Stands in for Lightning's optimizer wrapper outside a Trainer."""

    def __init__(self, opt):
        self.opt = opt

    def __getattr__(self, name):
        return getattr(self.opt, name)


def test_resume_continues_exactly_like_an_uninterrupted_run(make_cfg, tmp_path, classifier_dir):
    # n_critic=2 with 3 batches per epoch: the generator update falls on the first batch of
    # the second epoch, so the restored counter, optimizer states and random state all matter.
    args = ["model=wgan_gp", "model.n_critic=2", *SMALL, f"model.classifier_dir={classifier_dir}",
            "trainer.limit_train_batches=3", "test=false"]
    # last.ckpt is the latest epoch (configs/callbacks/model_checkpoint.yaml), not the best

    def run(out: str, epochs: int, *extra: str):
        cfg = make_cfg(*args, f"trainer.max_epochs={epochs}", *extra)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / out)
        main(cfg)
        return torch.load(tmp_path / out / "checkpoints" / "last.ckpt", weights_only=True)

    straight = run("straight", 2)
    run("first", 1)
    resumed = run("resumed", 2, f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}")
    assert straight["global_step"] == resumed["global_step"] == 6 + 3  # 6 D + 3 G updates
    assert _steps(straight) == _steps(resumed) == [3, 6]
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for opt_a, opt_b in zip(straight["optimizer_states"], resumed["optimizer_states"],
                            strict=True):
        for pid, state in opt_a["state"].items():
            for name, tensor in state.items():
                torch.testing.assert_close(opt_b["state"][pid][name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("key", ["optimizer", "scheduler"])
def test_a_single_optimizer_or_scheduler_is_refused_not_ignored(key):
    from functools import partial

    with pytest.raises(ValueError, match=f"gen_optimizer and disc_optimizer, not {key}="):
        LitGAN(net=GAN(in_shape=(1, 8, 8)), **{key: partial(torch.optim.SGD, lr=0.1)})
