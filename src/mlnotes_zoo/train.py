"""Train, test and report one model: ``main(cfg)`` and the ``mlnotes-zoo-train`` entry point.

``cfg`` is the composed Hydra config (``configs/train.yaml``); it reaches the code only
through ``hydra.utils.instantiate`` here, at the top.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["main", "cli"]


def main(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the best checkpoint, write ``metrics.json``; returns the test metrics."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from pytorch_lightning.plugins.io import CheckpointIO

    from mlnotes_zoo.resume import AtomicCheckpointIO, continue_csv_logs, resume_checkpoint
    from mlnotes_zoo.scale.launch import resolve_trainer_kwargs

    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resume_checkpoint(cfg.get("ckpt_path"), cfg.get("resume"), output_dir)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _convert_="all")
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer_kwargs = resolve_trainer_kwargs(instantiate(cfg.trainer, _partial_=True).keywords)
    plugins = list(trainer_kwargs.pop("plugins", None) or [])
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())  # a kill mid-write keeps the previous file
    trainer = pl.Trainer(**trainer_kwargs, plugins=plugins, callbacks=callbacks,
                         logger=loggers or False)
    if ckpt_path is not None and trainer.is_global_zero and _same_dir(ckpt_path, output_dir):
        # continuing in the run dir: keep its CSV rows up to the checkpoint
        continue_csv_logs(trainer.loggers, ckpt_path)

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        _atomic_write(output_dir / "config.yaml", OmegaConf.to_yaml(job_cfg, resolve=True))

    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics: dict[str, float] = {}
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        logged = trainer.callback_metrics
        metrics = {k: float(v) for k, v in logged.items() if k.startswith("test/")}
        if trainer.is_global_zero:
            report = {"model": _choice("model"), "checkpoint": best or "last weights",
                      "epochs": trainer.current_epoch, "metrics": metrics}
            _atomic_write(output_dir / "metrics.json", json.dumps(report, indent=2) + "\n")
            _print_metrics(metrics, output_dir)
    return metrics


def _same_dir(ckpt_path: str, output_dir: Path) -> bool:
    return Path(ckpt_path).resolve().parent.parent == output_dir.resolve()


def _choice(group: str) -> str | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    from mlnotes_zoo.weights import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _print_metrics(metrics: dict[str, Any], output_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="test metrics", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in sorted(metrics.items()):
        table.add_row(name, f"{value:.4f}")
    console = Console()
    console.print(table)
    console.print(f"run dir: {output_dir}")


def _task(cfg: DictConfig) -> float | None:
    from hydra.errors import InstantiationException

    from mlnotes_zoo.data.base import BadDataError
    from mlnotes_zoo.lit.base import NonFiniteLossError
    from mlnotes_zoo.resume import ResumeError, last_checkpoint
    from mlnotes_zoo.scale.launch import LaunchError
    from mlnotes_zoo.weights import (
        IncompatibleWeightsError,
        UnreadableWeightsError,
        UnsafeCheckpointError,
    )

    try:
        metrics = main(cfg)
    except NonFiniteLossError as err:
        if os.environ.get("RANK", "0") == "0":
            last = last_checkpoint(cfg.paths.output_dir)
            kept = (f"the last good checkpoint is {last}; resume with resume={last.parent.parent}"
                    if last.is_file() else "no checkpoint was written before it")
            print(f"error: {err}\nstopped; {kept}", file=sys.stderr)
        sys.exit(1)
    except (ResumeError, UnsafeCheckpointError, IncompatibleWeightsError,
            UnreadableWeightsError) as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except InstantiationException as err:
        # e.g. "Error in call to target 'mlnotes_zoo.create_model': ValueError(...)"
        print("error: " + " ".join(str(err).split("\n")[:2]), file=sys.stderr)
        sys.exit(2)
    except (BadDataError, FileNotFoundError) as err:
        # a missing data root or a damaged file: the message names it (raised in a
        # DataLoader worker, the original message is the last line)
        if os.environ.get("RANK", "0") == "0":
            lines = [line for line in str(err).splitlines() if line.strip()]
            text = lines[-1] if lines and lines[0].startswith("Caught ") else str(err)
            text = re.sub(r"^[\w.]*(Error|Exception): ", "", text)
            print(f"error: {text}", file=sys.stderr)
        sys.exit(2)
    except LaunchError as err:
        if os.environ.get("RANK", "0") == "0":  # one line, not one per rank
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    # The value Hydra sweepers optimise: the monitored validation metric is not known here,
    # so return the test loss when present.
    return metrics.get("test/loss")


def cli(argv: list[str] | None = None) -> None:
    """``mlnotes-zoo-train [overrides]``: same overrides as ``python train.py``."""
    import hydra

    from mlnotes_zoo.config import UsageError, check_overrides, config_dir
    from mlnotes_zoo.scale.launch import share_run_stamp

    argv = sys.argv[1:] if argv is None else argv
    try:
        argv = check_overrides(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    from mlnotes_zoo.resume import ResumeError, expand_resume

    try:
        argv = expand_resume(argv)  # resume=<run dir>: that run's overrides, in that dir
    except ResumeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *argv]
    share_run_stamp()  # under torchrun: one run dir for every rank
    hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(_task)()
