"""Train, test and report one model: ``main(cfg)`` and the ``mlnotes-zoo-train`` entry point.

``cfg`` is the composed Hydra config (``configs/train.yaml``); it reaches the code only
through ``hydra.utils.instantiate`` here, at the top.

A command line goes: Hydra parses and composes it (:func:`cli`); :class:`CheckConfig`
validates the composed config before Hydra creates the run dir; the job runs :func:`main`.
A mistake of the user's at any of these steps (a :class:`~mlnotes_zoo.errors.ZooError`, or
a Hydra composition error) is reported by :func:`_exit` in one or two lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

__all__ = ["main", "cli", "CheckConfig", "build_loggers"]


def main(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the best checkpoint, write ``metrics.json``; returns the test metrics."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ModelSummary

    from mlnotes_zoo.preemption import Preemption
    from mlnotes_zoo.resume import continue_csv_logs, last_checkpoint, resume_checkpoint
    from mlnotes_zoo.runtime import apply_runtime

    apply_runtime(cfg.get("runtime"))  # torch's threads, before anything is built
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resume_checkpoint(cfg.get("ckpt_path"), cfg.get("resume"), output_dir)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _convert_="all")
    callbacks, loggers, trainer_kwargs, plugins = trainer_parts(cfg)
    # SIGTERM/SIGUSR1: last.ckpt of where the run is, one line, exit code 143/138
    preemption = Preemption(last_checkpoint(output_dir), output_dir)
    callbacks.append(preemption)
    # Lightning's default summary, without its column of zero FLOPs
    if trainer_kwargs.pop("enable_model_summary", None) is not False and not any(
            isinstance(c, ModelSummary) for c in callbacks):
        callbacks.append(_model_summary())
    trainer = pl.Trainer(**trainer_kwargs, plugins=plugins, callbacks=callbacks,
                         logger=loggers or False, enable_model_summary=False)
    if ckpt_path is not None and trainer.is_global_zero and _same_dir(ckpt_path, output_dir):
        # continuing in the run dir: keep its CSV rows up to the checkpoint
        continue_csv_logs(trainer.loggers, ckpt_path)

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        _atomic_write(output_dir / "config.yaml", OmegaConf.to_yaml(job_cfg, resolve=True))
        _log_config(trainer.loggers, job_cfg)

    with preemption.stopped(trainer):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics: dict[str, float] = {}
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        with preemption.stopped(trainer):
            trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        logged = trainer.callback_metrics
        metrics = {k: float(v) for k, v in logged.items() if k.startswith("test/")}
        if trainer.is_global_zero:
            report = {"model": _choice("model"), "checkpoint": best or "last weights",
                      "epochs": trainer.current_epoch, "metrics": metrics}
            _atomic_write(output_dir / "metrics.json", json.dumps(report, indent=2) + "\n")
            _print_metrics(metrics, output_dir)
    if trainer.is_global_zero:  # MODEL_CARD.md: model, data, metric, checkpoint, commit
        from mlnotes_zoo.model_card import write_model_card

        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        write_model_card(output_dir, config=OmegaConf.to_container(job_cfg, resolve=True),
                         model=model, datamodule=datamodule, checkpoint=best or None,
                         metrics=metrics, epochs=trainer.current_epoch, overrides=_overrides())
    return metrics


def trainer_parts(cfg: DictConfig) -> tuple[list[Any], list[Any], dict[str, Any], list[Any]]:
    """The callbacks, loggers, ``pl.Trainer`` keyword arguments and plugins ``cfg`` asks for
    (train.py and eval.py build their Trainer from them)."""
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar
    from pytorch_lightning.plugins.io import CheckpointIO

    from mlnotes_zoo.resume import AtomicCheckpointIO
    from mlnotes_zoo.scale.launch import resolve_trainer_kwargs

    # a node without _target_ is a model's setting for a callback that is switched off
    # (callbacks=none leaves model/<name>.yaml's model_checkpoint.monitor behind)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()
                 if c and "_target_" in c]
    loggers = build_loggers(cfg.get("logger"))
    trainer_kwargs = resolve_trainer_kwargs(instantiate(cfg.trainer, _partial_=True).keywords)
    # switched off in the trainer config: the callbacks group's and logger group's ones too
    if trainer_kwargs.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if trainer_kwargs.get("enable_checkpointing") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
    if trainer_kwargs.pop("logger", None) is False:
        loggers = []
    plugins = list(trainer_kwargs.pop("plugins", None) or [])
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())  # a kill mid-write keeps the previous file
    return callbacks, loggers, trainer_kwargs, plugins


def build_loggers(loggers: DictConfig | None) -> list[Any]:
    """The logger group's loggers (``cfg.logger``).

    MLflow 3 keeps its file store (a ``file:`` tracking URI: ``logger=mlflow``'s default, a
    folder in the run dir that works offline) in maintenance mode and refuses it unless
    ``MLFLOW_ALLOW_FILE_STORE`` is set; it is set here for such a logger, unless the user set
    it. Its replacement, a SQLite store, needs the full ``mlflow`` package (SQLAlchemy,
    Alembic), which the zoo does not install: ``logger.mlflow.tracking_uri=sqlite:///...``.
    """
    from hydra.utils import instantiate

    nodes = [c for c in (loggers or {}).values() if c]
    for node in nodes:
        uri = str(node.get("tracking_uri") or "file:")
        if str(node.get("_target_", "")).endswith("MLFlowLogger") and uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return [instantiate(c) for c in nodes]


def _log_config(loggers: list[Any], job_cfg: DictConfig) -> None:
    """The run's resolved model, data, trainer and seed as the params of the experiment
    trackers (MLflow, W&B; lightning-hydra-template's ``log_hyperparameters``): Lightning
    logs only the LightningModule's own arguments, which leave out the network's kwargs
    (``model/net/latent_dim``)."""
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    trackers = [lg for lg in loggers if isinstance(lg, (MLFlowLogger, WandbLogger))]
    if trackers:
        resolved = OmegaConf.to_container(job_cfg, resolve=True)
        params = {k: resolved[k] for k in ("model", "data", "trainer", "seed") if k in resolved}
        for tracker in trackers:
            tracker.log_hyperparams(params)


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _model_summary() -> Any:
    """Lightning's rich model summary without its FLOPs column, which Lightning fills only by
    running a module's ``example_input_array`` (0 for every module without one)."""
    from pytorch_lightning.callbacks import RichModelSummary
    from pytorch_lightning.utilities.model_summary import (
        get_formatted_model_size,
        get_human_readable_count,
    )

    class ModelSummary(RichModelSummary):
        @staticmethod
        def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int,
                      trainable_parameters: int, model_size: float,
                      total_training_modes: dict[str, int], total_flops: int,
                      **summarize_kwargs: Any) -> None:
            if total_flops:
                return RichModelSummary.summarize(
                    summary_data, total_parameters, trainable_parameters, model_size,
                    total_training_modes, total_flops, **summarize_kwargs)
            from rich import get_console
            from rich.table import Table

            columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
            table = Table(header_style="bold magenta")
            for name, _ in columns:
                table.add_column(name, style="dim" if name == " " else None,
                                 justify="right" if name == "Params" else "left")
            for row in zip(*(values for _, values in columns), strict=True):
                table.add_row(*row)
            totals = Table.grid(expand=True)
            totals.add_column()
            for label, value in [
                ("Trainable params", get_human_readable_count(trainable_parameters)),
                ("Non-trainable params",
                 get_human_readable_count(total_parameters - trainable_parameters)),
                ("Total params", get_human_readable_count(total_parameters)),
                ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
                ("Modules in train mode", total_training_modes["train"]),
                ("Modules in eval mode", total_training_modes["eval"]),
            ]:
                totals.add_row(f"[bold]{label}[/]: {value}")
            console = get_console()
            console.print(table)
            console.print(totals)
            return None

    return ModelSummary()


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
    for name, value in sorted(metrics.items()):  # the same in train.log, one line each
        _FILE_LOG.info("test metric %s = %.4f", name, value)
    _FILE_LOG.info("run dir: %s", output_dir)


def run_guarded(job: Any, cfg: DictConfig, what: str, run_dir: Path | None = None) -> Any:
    """``job(cfg)`` as a Hydra job of train.py, eval.py or predict.py: the console also logged
    to the run dir's file; a mistake of the user's reported in one or two lines (exit 2)."""
    from hydra.errors import InstantiationException

    from mlnotes_zoo.errors import ZooError

    _log_to_file()
    try:
        return job(cfg)
    except (ZooError, InstantiationException) as err:
        _exit(err, run_dir=run_dir)
    except Exception:  # a bug: its traceback on the console (Hydra) and in train.log
        _FILE_LOG.exception(f"error: {what} failed")
        raise


def _task(cfg: DictConfig) -> float | None:
    """The Hydra job: :func:`main`, with a mistake of the user's reported in one or two lines."""
    metrics = run_guarded(main, cfg, "the run", run_dir=Path(cfg.paths.output_dir))
    # The value Hydra sweepers optimise: the monitored validation metric is not known here,
    # so return the test loss when present.
    return metrics.get("test/loss")


def cli(argv: list[str] | None = None) -> None:
    """``mlnotes-zoo-train [overrides]``: same overrides as ``python train.py``.

    Hydra parses the command line and composes the config; :class:`CheckConfig` validates
    it before Hydra creates the run dir.
    """
    import hydra
    from hydra.errors import HydraException

    from mlnotes_zoo.config import check_replayed, config_dir
    from mlnotes_zoo.errors import ZooError
    from mlnotes_zoo.resume import expand_resume
    from mlnotes_zoo.scale.launch import end_process_group, leave_process, share_run_stamp

    _quiet_third_party()
    try:
        # The one place the command line is rewritten: ckpt_path=/resume= take a path as it
        # is given (Lightning's names hold "="); resume=<run dir>: that run's saved overrides,
        # held to the config schema, take part in the composition in front of the new ones.
        args = [_path_as_given(a) for a in (sys.argv[1:] if argv is None else argv)]
        sys.argv = [sys.argv[0], *expand_resume(args, check=check_replayed)]
        share_run_stamp()  # under torchrun: one run dir for every rank
        with _hydra_errors_raised():
            hydra.main(config_path=str(config_dir()), config_name="train",
                       version_base="1.3")(_task)()
        distributed = end_process_group()  # a DDP run's group, before the interpreter ends
    except (ZooError, HydraException) as err:  # a wrong override or value: nothing was run
        _exit(err)
    if distributed:  # a rank's process: no C++ teardown at exit (leave_process says why)
        leave_process(0)


def _path_as_given(arg: str) -> str:
    """``ckpt_path=``, ``resume=``, ``hydra.run.dir=``, ``hydra.sweep.dir=`` with the path as
    the user typed it: quoted for Hydra when it holds characters Hydra's grammar reads
    (``epoch=3-step=40.ckpt``, commas, brackets, quotes). Values the user quoted for Hydra,
    ``null``, ``auto`` and values with interpolations stay as they are."""
    from mlnotes_zoo.resume import hydra_value

    match = re.fullmatch(r"(\+{0,2})(ckpt_path|resume|hydra\.run\.dir|hydra\.sweep\.dir)=(.*)",
                         arg, flags=re.DOTALL)
    if match is None:
        return arg
    plus, key, value = match.groups()
    if value[:1] in ("'", '"') or value in ("", "null", "auto") or "${" in value:
        return arg
    return f"{plus}{key}={hydra_value(value)}"


class CheckConfig(Callback):
    """Validate the composed config before Hydra creates a run dir (``hydra.callbacks`` in
    configs/hydra/default.yaml; :mod:`mlnotes_zoo.validation`).

    A run is checked as composed; a multirun checks each value of each sweep once before the
    sweep starts (a sweeper that draws values as it goes, e.g. Optuna's, has each job checked
    when it starts). Hydra turns an exception of a callback into a warning, so a refused
    config ends the process here.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlnotes_zoo.validation import check_runnable, validate_config

        with _refused():
            validate_config(config)
            check_runnable(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.global_hydra import GlobalHydra

        from mlnotes_zoo.validation import validate_config

        loader = GlobalHydra.instance().config_loader()
        with _refused():
            for overrides in _sweep_variants(config):
                validate_config(loader.load_sweep_config(config, overrides))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.types import RunMode

        from mlnotes_zoo.validation import check_runnable, validate_config

        if config.hydra.mode == RunMode.MULTIRUN:
            with _refused():
                validate_config(config)
                check_runnable(config)


@contextlib.contextmanager
def _refused() -> Iterator[None]:
    """A wrong override or value ends the process here, before the run dir exists."""
    from hydra.errors import HydraException

    from mlnotes_zoo.errors import ZooError

    try:
        yield
    except (ZooError, HydraException) as err:
        _exit(err)


def _sweep_variants(config: DictConfig) -> list[list[str]]:
    """Jobs' overrides that give every value of every listed sweep at least once."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    fixed: list[str] = []
    sweeps: list[tuple[str, list[str]]] = []
    for o in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
        if not o.is_sweep_override():
            fixed.append(o.input_line)
        elif o.is_discrete_sweep():
            sweeps.append((o.get_key_element(), list(o.sweep_string_iterator())))
        # interval() and the like: the sweeper draws the values; checked per job
    firsts = [f"{key}={values[0]}" for key, values in sweeps]
    variants = [fixed + firsts]
    for j, (key, values) in enumerate(sweeps):
        variants += [fixed + firsts[:j] + [f"{key}={v}"] + firsts[j + 1:] for v in values[1:]]
    return variants


@contextlib.contextmanager
def _hydra_errors_raised() -> Iterator[None]:
    """Let Hydra raise its composition errors (HYDRA_FULL_ERROR=1) instead of printing them,
    so that :func:`_exit` puts them in the zoo's words."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def _exit(err: Exception, run_dir: Path | None = None) -> NoReturn:
    """Print ``error: <message>`` (rank 0 only) and exit with the error's code.

    ``err`` is a :class:`~mlnotes_zoo.errors.ZooError`, or a Hydra error that is the user's
    doing (an override that does not fit the configs, a constructor refusing its arguments).
    A run that stopped part-way (exit code 1) also says where it can continue from.
    """
    from hydra.errors import InstantiationException
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    from mlnotes_zoo.config import usage_error
    from mlnotes_zoo.errors import UsageError, ZooError

    if isinstance(err, InstantiationException):
        # e.g. "Error in call to target 'mlnotes_zoo.create_model': ValueError(...)"
        err = (err.__cause__ if isinstance(err.__cause__, ZooError) else
               UsageError(" ".join(str(err).split("\n")[:2])))
    elif not isinstance(err, ZooError):
        err = usage_error(err)
    text = _message(err)
    if err.exit_code == 1 and run_dir is not None:
        from mlnotes_zoo.resume import last_checkpoint

        last = last_checkpoint(run_dir)
        text += ("\nstopped; " + (f"the last good checkpoint is {last}; resume with "
                                   f"resume={last.parent.parent}" if last.is_file() else
                                   "no checkpoint was written before it"))
    if rank_zero_only.rank == 0:  # one message, not one per process
        _FILE_LOG.error("error: %s", text)
        print(f"error: {text}", file=sys.stderr)
    sys.exit(err.exit_code)


def _message(err: Exception) -> str:
    """The error's own message; for one raised in a DataLoader worker (re-raised by torch as
    "Caught BadDataError in DataLoader worker process 0 ... Traceback ..."), its last line."""
    text = str(err)
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith("Caught "):
        text = re.sub(r"^[\w.]*(Error|Exception): ", "", lines[-1])
    return text


# train.log gets what the console shows (Hydra's job logging writes the root logger's records
# there): Lightning's own loggers, which print to the console themselves and do not propagate,
# get the file handler too; lines the zoo prints (the error, the test metrics) and warnings
# go to the file through this logger, which writes to the file only.
_FILE_LOG = logging.getLogger("mlnotes_zoo.train")
_FILE_LOG.propagate = False
_FILE_LOG.setLevel(logging.INFO)
_FILE_LOG.addHandler(logging.NullHandler())  # outside a Hydra job: nowhere (not stderr)
_OWN_CONSOLE_LOGGERS = ("pytorch_lightning", "lightning_fabric")


def _log_to_file() -> None:
    """Send the records of Lightning's loggers, :data:`_FILE_LOG` and warnings to the files
    the root logger writes to (``<run dir>/train.log``), and nowhere else new."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for name in [*_OWN_CONSOLE_LOGGERS, _FILE_LOG.name]:
        logger = logging.getLogger(name)
        if name != _FILE_LOG.name and logger.propagate:
            continue  # its records reach the root's file already
        for handler in list(logger.handlers):  # an earlier run's file (in one process)
            if isinstance(handler, logging.FileHandler) and handler not in files:
                logger.removeHandler(handler)
        for handler in files:
            if handler not in logger.handlers:
                logger.addHandler(handler)
    if not getattr(warnings.showwarning, "_to_train_log", False):
        warnings.showwarning = _show_warning_and_log(warnings.showwarning)


def _show_warning_and_log(show: Any) -> Any:
    def show_and_log(message: Any, category: type[Warning], filename: str, lineno: int,
                     file: Any = None, line: str | None = None) -> None:
        show(message, category, filename, lineno, file, line)
        _FILE_LOG.warning("%s", warnings.formatwarning(message, category, filename, lineno,
                                                       line).rstrip())

    show_and_log._to_train_log = True  # type: ignore[attr-defined]
    return show_and_log


class _NoAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def _quiet_third_party() -> None:
    """No advertisements or deprecation notices of libraries in a run's output.

    - Lightning 2.6 logs a "💡 Tip" for its cloud services (litlogger, litmodels) when a
      Trainer starts, with no flag to turn it off: its rank-zero logger drops those records.
    - Lightning's ``utilities/_pytree.py`` builds torch's deprecated ``LeafSpec`` (torch 2.14
      warns on every run); nothing a user of the zoo can change.
    """
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvertisements) for f in logger.filters):
        logger.addFilter(_NoAdvertisements())
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning, module=r"pytorch_lightning\.utilities\._pytree")
