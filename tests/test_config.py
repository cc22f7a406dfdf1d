"""Every config composes and instantiates; wrong overrides give short, useful errors."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mlnotes_zoo.config import compose, config_dir, group_options


@pytest.mark.parametrize("model", group_options("model"))
def test_every_model_config_builds_and_steps_on_its_default_data(make_cfg, model):
    cfg = make_cfg(f"model={model}")
    lit = instantiate(cfg.model, _convert_="all")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    out = lit.model_step(next(iter(dm.train_dataloader())), "train")
    assert torch.isfinite(out["loss"]) and out["loss"].dim() == 0


@pytest.mark.parametrize("group", ["data", "trainer", "logger", "callbacks", "debug", "experiment"])
def test_groups_exist_and_compose(make_cfg, group):
    options = group_options(group)
    assert options
    for option in options:
        if group == "trainer" and option in ("gpu",):
            continue  # composes fine; instantiating needs a GPU
        make_cfg(f"{group}={option}")


def test_data_choice_from_the_command_line_wins_over_the_model_default(make_cfg):
    assert make_cfg("model=vae", "data=mnist").data._target_.endswith("MNISTDataModule")
    assert make_cfg("model=vae").data._target_.endswith("DigitsDataModule")


def test_a_net_key_is_set_by_its_full_path_and_the_short_form_points_to_it(run_cli):
    assert compose(["model.net.latent_dim=2"]).model.net.latent_dim == 2
    code, err = run_cli("model.latent_dim=2")  # Hydra cannot express model.<net key>
    assert code == 2 and "did you mean 'model.net.latent_dim'?" in err.splitlines()[0], err


@pytest.mark.parametrize(
    "override, names",
    [
        ("model=nosuch", ["nosuch", "vae"]),
        ("model.latnt_dim=3", ["latnt_dim", "latent_dim"]),
        ("data=nope", ["nope", "digits", "mnist"]),
        ("trainer.max_epoch=2", ["max_epoch", "max_epochs"]),
        ("model.net.latnt_dim=3", ["latnt_dim", "model.net.latent_dim"]),
    ],
)
def test_wrong_override_is_a_short_error_naming_the_choices(run_train, tmp_path, override, names):
    out = run_train(override, cwd=tmp_path, timeout=120)
    assert out.returncode != 0
    err = out.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) <= 2, err
    for name in names:
        assert name in err
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("model", group_options("model"))
def test_every_model_config_exposes_the_scale_switches(make_cfg, model):
    # `model.activation_checkpointing=true` must work without "+" for every model
    cfg = make_cfg(f"model={model}")
    assert cfg.model.activation_checkpointing is False
    assert cfg.model.compile is False  # configs/train.yaml, for every model


def test_a_model_config_is_one_file_and_the_command_line_still_wins(run_cli):
    # configs/model/<name>.yaml is global: the LightningModule under `model:` and, where the
    # model needs them, its epochs, the metric that picks its best checkpoint, the CPU
    # threads it trains fastest with and its batch size. It composes
    # after the trainer and callbacks groups (train.yaml), so those keys win over
    # trainer/*.yaml and callbacks/*.yaml, and the command line wins over both.
    default = compose(["model=vae"])
    checked = 0
    for model in group_options("model"):
        path = config_dir() / "model" / f"{model}.yaml"
        assert path.read_text().startswith("# @package _global_\n"), path
        own = OmegaConf.load(path)
        assert set(own) <= {"defaults", "model", "trainer", "callbacks", "runtime", "data"}, (
            model, list(own))
        assert set(own.get("data", {})) <= {"batch_size"}, model  # e.g. conformer_ctc's 16
        assert set(own.get("trainer", {})) <= {"max_epochs", "precision"}, model
        assert set(own.get("runtime", {})) <= {"threads"}, model  # tests/test_runtime.py
        assert set(own.get("callbacks", {})) <= {"model_checkpoint"}, model
        assert set(OmegaConf.select(own, "callbacks.model_checkpoint", default={})) <= {
            "monitor", "mode"}, model
        assert own.defaults[-1] == "_self_", model
        cfg = compose([f"model={model}"])
        monitor = OmegaConf.select(own, "callbacks.model_checkpoint.monitor")
        if monitor is not None:
            assert monitor != default.callbacks.model_checkpoint.monitor
            assert cfg.callbacks.model_checkpoint.monitor == monitor
            assert compose([f"model={model}", "trainer=ddp"]).callbacks.model_checkpoint == (
                cfg.callbacks.model_checkpoint)
            assert compose([f"model={model}", "callbacks.model_checkpoint.monitor=val/loss"]
                           ).callbacks.model_checkpoint.monitor == "val/loss"
        precision = OmegaConf.select(own, "trainer.precision")
        if precision is not None:  # e.g. gpt's bf16-mixed: a trainer choice keeps it
            assert compose([f"model={model}", "trainer=ddp"]).trainer.precision == precision
            assert compose([f"model={model}", "trainer.precision=32-true"]
                           ).trainer.precision == "32-true"
        batch_size = OmegaConf.select(own, "data.batch_size")
        if batch_size is not None:  # over its data config's; the command line wins
            assert cfg.data.batch_size == batch_size
            assert compose([f"model={model}", "data.batch_size=8"]).data.batch_size == 8
        epochs = OmegaConf.select(own, "trainer.max_epochs")
        if epochs is None:
            continue  # this model picks the checkpoint metric only (or extends one that does)
        assert epochs != default.trainer.max_epochs
        assert cfg.trainer.max_epochs == epochs
        # a trainer choice does not reset the model's epochs; an explicit key beats both
        assert compose([f"model={model}", "trainer=ddp"]).trainer.max_epochs == epochs
        assert compose([f"model={model}", "trainer.max_epochs=3"]).trainer.max_epochs == 3
        checked += 1
    assert checked >= 3  # ctc, conformer_ctc, gpt, faster_rcnn
    # mask_rcnn extends faster_rcnn: its epochs and mode, its own metric
    mask = compose(["model=mask_rcnn"])
    assert mask.trainer.max_epochs == compose(["model=faster_rcnn"]).trainer.max_epochs
    assert (mask.callbacks.model_checkpoint.monitor, mask.callbacks.model_checkpoint.mode) == (
        "val/mask_map_50", "max")
    assert not (config_dir() / "schedule").exists()  # no second file per model
    code, err = run_cli("schedule=ctc")
    assert code == 2 and "schedule" in err
