"""Shared fixtures: a Hydra-composed, shrunk copy of the real training config."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from mlnotes_zoo.config import config_dir

REPO = Path(__file__).resolve().parents[1]

# The suite runs in parallel (pytest-xdist, one worker per core: pyproject's addopts). Each
# worker, and every process a test starts, computes on one thread, so the workers do not
# fight over the cores; `pytest -n 0` runs in one process with torch's default threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# Fast, CPU-only, a couple of batches: the real config shrunk (lightning-hydra-template style).
SHRINK = [
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "trainer.enable_model_summary=false",
]


def compose_cfg(out: Path, overrides) -> DictConfig:
    """The training config shrunk by SHRINK plus ``overrides``, writing into ``out``, set as
    Hydra's current config (as ``@hydra.main`` would)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[*SHRINK, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    return cfg


def train_in(out: Path, *overrides: str) -> Path:
    """``train.main`` on :func:`compose_cfg` ``(out, overrides)``; returns the run dir."""
    from mlnotes_zoo.train import main

    try:
        main(compose_cfg(out, overrides))
    finally:
        GlobalHydra.instance().clear()
    return out


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg("model=vae", ...)`` -> composed config writing into ``tmp_path``."""
    yield lambda *overrides: compose_cfg(tmp_path, overrides)
    GlobalHydra.instance().clear()


@pytest.fixture
def run_cli(monkeypatch, capsys) -> Callable[..., tuple[int, str]]:
    """``run_cli(*overrides)``: ``mlnotes-zoo-train overrides`` in-process, for commands that
    stop before training; returns (exit code, stderr). The process state the entry point
    sets (argv, environment, Hydra's logging) is put back afterwards."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for name in ("MLNOTES_RUN_STAMP", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py"])

    def _run(*overrides: str) -> tuple[int, str]:
        from mlnotes_zoo.train import cli

        with pytest.raises(SystemExit) as exit_info:
            cli(list(overrides))
        return exit_info.value.code, capsys.readouterr().err.strip()

    yield _run
    root.handlers[:], root.level = handlers, level
    GlobalHydra.instance().clear()


@pytest.fixture
def run_train() -> Callable[..., subprocess.CompletedProcess]:
    """``run_train(*args, cwd=...)``: ``python train.py args...`` in a subprocess."""

    def _run(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
        return subprocess.run(
            [sys.executable, str(REPO / "train.py"), *args],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
        )

    return _run
