"""Every config composes and instantiates; wrong overrides give short, useful errors."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mlnotes_zoo.config import check_overrides, config_dir, group_options


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


def test_net_keys_can_be_set_on_the_model_for_short():
    assert check_overrides(["model.latent_dim=2,8", "seed=1"]) == [
        "model.net.latent_dim=2,8", "seed=1"]


@pytest.mark.parametrize(
    "override, names",
    [
        ("model=nosuch", ["nosuch", "vae"]),
        ("model.latnt_dim=3", ["latnt_dim", "latent_dim"]),
        ("data=nope", ["nope", "digits", "mnist"]),
        ("trainer.max_epoch=2", ["max_epoch", "max_epochs"]),
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


def test_a_model_sets_its_own_epochs_and_the_command_line_still_wins():
    from mlnotes_zoo.config import _compose

    schedules = {p.stem for p in (config_dir() / "schedule").glob("*.yaml")}
    assert schedules <= set(group_options("model")), "a schedule/<name>.yaml without its model"
    default_epochs = _compose(["model=vae"]).trainer.max_epochs
    for model in schedules:
        epochs = OmegaConf.load(config_dir() / "schedule" / f"{model}.yaml").trainer.max_epochs
        assert epochs != default_epochs
        assert _compose([f"model={model}"]).trainer.max_epochs == epochs
        # a trainer choice does not reset the model's schedule; an explicit key beats both
        assert _compose([f"model={model}", "trainer=ddp"]).trainer.max_epochs == epochs
        assert _compose([f"model={model}", "trainer.max_epochs=3"]).trainer.max_epochs == 3
    with pytest.raises(Exception, match="schedule"):
        check_overrides(["schedule=ctc"])
