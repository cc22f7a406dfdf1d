"""Trainer settings decided by the launcher (torchrun, SLURM) and the CPU loss scaler."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from pytorch_lightning.plugins.precision import MixedPrecision

from mlnotes_zoo.config import config_dir
from mlnotes_zoo.scale.launch import LaunchError, resolve_trainer_kwargs, torchrun_sizes

TORCHRUN_2x4 = {"TORCHELASTIC_RUN_ID": "abc", "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8",
                "GROUP_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}


def test_torchrun_environment_sets_devices_and_nodes(monkeypatch):
    for key, value in TORCHRUN_2x4.items():
        monkeypatch.setenv(key, value)
    assert torchrun_sizes() == (4, 2)
    kwargs = resolve_trainer_kwargs({"accelerator": "cpu", "devices": "auto", "strategy": "ddp"})
    assert kwargs["devices"] == 4 and kwargs["num_nodes"] == 2
    with pytest.raises(LaunchError, match="LOCAL_WORLD_SIZE"):
        resolve_trainer_kwargs({"accelerator": "cpu", "devices": 3})
    with pytest.raises(LaunchError, match="num_nodes"):
        resolve_trainer_kwargs({"accelerator": "cpu", "num_nodes": 3})


def test_without_torchrun_nothing_changes(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert torchrun_sizes() is None
    kwargs = {"accelerator": "cpu", "devices": 2, "precision": "bf16-mixed"}
    assert resolve_trainer_kwargs(kwargs) == kwargs


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA uses Lightning's own scaler")
def test_16_mixed_on_cpu_gets_a_grad_scaler():
    kwargs = resolve_trainer_kwargs({"accelerator": "cpu", "precision": "16-mixed"})
    assert "precision" not in kwargs
    (plugin,) = kwargs["plugins"]
    assert isinstance(plugin, MixedPrecision) and plugin.device == "cpu"
    assert isinstance(plugin.scaler, torch.amp.GradScaler) and plugin.scaler.is_enabled()


def _compose(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("trainer", ["ddp", "zero1", "fsdp", "fsdp1", "deepspeed"])
def test_scale_trainer_configs_compose(trainer):
    cfg = _compose(f"trainer={trainer}")
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer" and cfg.trainer.strategy


def test_multi_node_and_slurm_configs_compose():
    # A sweep submitted as SLURM jobs (hydra-submitit-launcher), 2 nodes x 4 GPUs each.
    cfg = _compose("hydra/launcher=submitit_slurm", "hydra.launcher.nodes=2",
                   "hydra.launcher.tasks_per_node=4", "hydra.launcher.gpus_per_node=4",
                   "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.nodes == cfg.trainer.num_nodes == 2
    GlobalHydra.instance().clear()


def test_lightning_detects_a_slurm_job(monkeypatch):
    from lightning_fabric.plugins.environments import SLURMEnvironment

    for key, value in {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4",
                       "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "n[1-2]",
                       "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1"}.items():
        monkeypatch.setenv(key, value)
    assert SLURMEnvironment.detect()
    env = SLURMEnvironment()
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (8, 5, 1, 1)
