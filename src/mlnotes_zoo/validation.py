"""Validation of a composed training config, before anything is built or written.

The constructors are the schema: every node with a ``_target_`` is checked against its
target's keyword parameters and their annotations (types, ``Literal`` choices and the ranges
of :mod:`mlnotes_zoo.constraints`), through :func:`mlnotes_zoo.constraints.check_arguments`'s
pieces, the same check ``create_model`` runs:

- each key must be a parameter of the target (or of the base class it passes ``**kwargs``
  to); a ``mlnotes_zoo.create_model`` node is checked against the registered builder;
- each value must fit the parameter's annotation; a nested node with a ``_target_`` is
  checked as its own node.

Third-party targets that the zoo cannot annotate (optimizers, LR schedulers, the Trainer,
Lightning's callbacks and loggers) get typed stand-in signatures here, keyed by target;
``configs/train.yaml``'s own keys get one too. A problem is a
:class:`~mlnotes_zoo.errors.UsageError` of one or two lines naming key, value and what is
allowed::

    model.net.latent_dim=-3: must be an integer >= 1
    model.temperature=0: must be a number > 0 (the contrastive temperature τ)

``train.py`` runs :func:`validate_config` after Hydra composes the config and before it
creates the run dir (the Hydra callback ``mlnotes_zoo.train.CheckConfig``).
Checks that involve two values (``block_size <= max_len``) stay in the constructors.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf

from mlnotes_zoo.constraints import (
    Field,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    Parameter,
    PositiveFloat,
    PositiveInt,
    Probability,
    Seed,
    UnitInterval,
    parameters,
    show,
)
from mlnotes_zoo.errors import UsageError

__all__ = ["validate_config", "check_runnable", "resolve", "target_parameters", "STAND_INS",
           "unknown"]

# -- stand-in signatures for targets the zoo cannot annotate -------------------------------
STAND_INS: dict[str, Callable[..., None]] = {}


def _stand_in(*targets: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a typed signature for ``targets``: its annotations replace theirs."""

    def register(signature: Callable[..., None]) -> Callable[..., None]:
        for target in targets:
            STAND_INS[target] = signature
        return signature

    return register


# configs/train.yaml's own keys (no constructor reads them)
@_stand_in("train.yaml")
def _train_yaml(*, seed: Seed | None, ckpt_path: str | None, resume: str | None,
                test: bool) -> None: ...


@_stand_in("torch.optim.Adam", "torch.optim.AdamW")
def _adam(*, lr: PositiveFloat, betas: tuple[UnitInterval, UnitInterval], eps: PositiveFloat,
          weight_decay: NonNegativeFloat, amsgrad: bool) -> None: ...


@_stand_in("torch.optim.SGD")
def _sgd(*, lr: PositiveFloat, momentum: NonNegativeFloat, dampening: NonNegativeFloat,
         weight_decay: NonNegativeFloat, nesterov: bool) -> None: ...


@_stand_in("torch.optim.lr_scheduler.CosineAnnealingLR")
def _cosine(*, T_max: PositiveInt, eta_min: NonNegativeFloat) -> None: ...  # noqa: N803


@_stand_in("torch.optim.lr_scheduler.StepLR")
def _step(*, step_size: PositiveInt, gamma: PositiveFloat) -> None: ...


@_stand_in("torch.optim.lr_scheduler.MultiStepLR")
def _multi_step(*, milestones: list[PositiveInt], gamma: PositiveFloat) -> None: ...


@_stand_in("torch.optim.lr_scheduler.ExponentialLR")
def _exponential(*, gamma: PositiveFloat) -> None: ...


@_stand_in("torch.optim.lr_scheduler.LinearLR")
def _linear(*, start_factor: Probability, end_factor: Fraction, total_iters: PositiveInt) -> None:
    ...


@_stand_in("pytorch_lightning.Trainer")
def _trainer(
    *,
    devices: PositiveInt | Literal[-1] | str | list[NonNegativeInt],
    num_nodes: PositiveInt,
    max_epochs: PositiveInt | Literal[-1] | None,
    min_epochs: NonNegativeInt | None,
    max_steps: Annotated[int, Field(ge=-1, description="-1: no limit")],
    min_steps: NonNegativeInt | None,
    limit_train_batches: NonNegativeInt | Fraction | None,
    limit_val_batches: NonNegativeInt | Fraction | None,
    limit_test_batches: NonNegativeInt | Fraction | None,
    limit_predict_batches: NonNegativeInt | Fraction | None,
    overfit_batches: NonNegativeInt | Fraction,
    val_check_interval: PositiveInt | Probability | None,
    check_val_every_n_epoch: PositiveInt | None,
    num_sanity_val_steps: Annotated[int, Field(ge=-1, description="-1: all")] | None,
    log_every_n_steps: PositiveInt | None,
    accumulate_grad_batches: PositiveInt,
    gradient_clip_val: NonNegativeFloat | None,
    gradient_clip_algorithm: Literal["norm", "value"] | None,
    fast_dev_run: NonNegativeInt | bool,
    reload_dataloaders_every_n_epochs: NonNegativeInt,
    enable_progress_bar: bool | None,
    enable_checkpointing: bool | None,
    logger: bool | None,  # which loggers: the logger group; false switches them off
) -> None: ...


@_stand_in("pytorch_lightning.callbacks.ModelCheckpoint")
def _model_checkpoint(
    *,
    monitor: str | None,
    mode: Literal["min", "max"],
    save_last: bool | Literal["link"] | None,
    save_top_k: Annotated[int, Field(ge=-1, description="-1: every checkpoint")],
    every_n_train_steps: NonNegativeInt | None,
    every_n_epochs: Annotated[int, Field(ge=0, description="0: no epoch-end checkpoints")] | None,
) -> None: ...


@_stand_in("pytorch_lightning.callbacks.EarlyStopping")
def _early_stopping(*, monitor: str, min_delta: float, patience: NonNegativeInt,
                    mode: Literal["min", "max"]) -> None: ...


@_stand_in("pytorch_lightning.callbacks.RichProgressBar")
def _rich_progress_bar(
    *, refresh_rate: Annotated[int, Field(ge=0, description="0: no progress bar")], leave: bool,
) -> None: ...


@_stand_in("pytorch_lightning.loggers.CSVLogger")
def _csv_logger(*, name: str | None, version: NonNegativeInt | str | None,
                flush_logs_every_n_steps: PositiveInt) -> None: ...


@_stand_in("pytorch_lightning.loggers.TensorBoardLogger")
def _tensorboard_logger(*, name: str | None, version: NonNegativeInt | str | None,
                        log_graph: bool, default_hp_metric: bool) -> None: ...


_CREATE_MODEL = ("mlnotes_zoo.create_model", "mlnotes_zoo.registry.create_model")


def target_parameters(target: str, obj: Callable[..., Any]) -> tuple[dict[str, Parameter], bool]:
    """The keyword parameters of ``obj`` (the object ``target`` names), with the annotations of
    its stand-in where it has one; and whether it takes any other key."""
    params, open_kwargs = parameters(obj)
    stand_in = STAND_INS.get(target)
    if stand_in is not None:
        params = {**params, **parameters(stand_in)[0]}
    return params, open_kwargs


# -- the walk ------------------------------------------------------------------------------
# Validated in this order, so that a bad trainer.max_epochs is reported as itself and not as
# the model's scheduler key that interpolates it.
SECTIONS = ("trainer", "data", "model", "callbacks", "logger")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`~mlnotes_zoo.errors.UsageError` on the first unknown key, wrong-typed or
    out-of-range value of the composed config ``cfg``."""
    top = parameters(STAND_INS["train.yaml"])[0]
    for key, param in top.items():
        if key in cfg:
            _check_value(cfg, key, "", param)
    runtime = cfg.get("runtime")
    if isinstance(runtime, DictConfig):  # train.yaml's runtime: (mlnotes_zoo.runtime)
        from mlnotes_zoo.runtime import runtime_settings

        params = parameters(runtime_settings)[0]
        for key in runtime.keys():
            if str(key) not in params:
                raise UsageError(unknown(f"runtime.{key}", list(params), "runtime"))
            _check_value(runtime, str(key), "runtime", params[str(key)])
    for section in SECTIONS:
        node = cfg.get(section)
        if isinstance(node, DictConfig):
            _walk(node, section)


def check_runnable(cfg: DictConfig) -> None:
    """Raise :class:`~mlnotes_zoo.errors.UsageError` when a valid config cannot run here:
    ``trainer.accelerator=gpu|cuda|mps`` on a machine without one, a ``ckpt_path`` (or
    ``model.encoder_init``, ``model.teacher``) that is not a file, a logger whose library is
    not installed (``logger=wandb``). ``train.py`` checks this with :func:`validate_config`,
    before the run dir exists (Lightning would raise deep inside the Trainer, after)."""
    import torch

    _check_logger_packages(cfg.get("logger"))
    ckpt_path = cfg.get("ckpt_path")
    if isinstance(ckpt_path, str) and "://" not in ckpt_path and not os.path.isfile(ckpt_path):
        raise UsageError(f"ckpt_path={ckpt_path}: no such checkpoint file (ckpt_path takes a "
                         ".ckpt file; resume=<run dir> continues a run in its dir)")
    _check_model_files(cfg.get("model"))
    trainer = cfg.get("trainer")
    name = trainer.get("accelerator") if isinstance(trainer, DictConfig) else None
    strategy = str(trainer.get("strategy")) if isinstance(trainer, DictConfig) else ""
    if not isinstance(name, str) or strategy.startswith(("deepspeed", "fsdp")):
        return  # CUDA-only strategies: mlnotes_zoo.scale.launch names them in its refusal
    mps = getattr(torch.backends, "mps", None)
    present = {"gpu": torch.cuda.is_available(), "cuda": torch.cuda.is_available(),
               "mps": bool(mps and mps.is_available())}
    if present.get(name.lower(), True):
        return
    here = ["cpu", "auto", *sorted(k for k, v in present.items() if v)]
    raise UsageError(f"trainer.accelerator={name}: this machine has no {name.upper()} device "
                     f"(torch sees none); use trainer.accelerator={'|'.join(here)}")


# Files a model reads when its run starts (the LightningModule would refuse a missing one only
# once the run dir exists): key under model -> (when it is read, what it takes).
_MODEL_FILES = {
    "encoder_init": (lambda model: True, "the .ckpt of a model=hubert run, e.g. <run dir>/"
                     "checkpoints/last.ckpt, or null (no pretrained encoder)"),
    "teacher": (lambda model: model.get("iteration") == 2,
                "the .ckpt of a model=hubert run, whose network gives iteration 2's targets"),
}


def _check_model_files(model: Any) -> None:
    if not isinstance(model, DictConfig):
        return
    for key, (read, takes) in _MODEL_FILES.items():
        path = model.get(key)
        if isinstance(path, str) and read(model) and not os.path.isfile(path):
            raise UsageError(f"model.{key}={path}: no such checkpoint file (model.{key} takes "
                             f"{takes})")


# Loggers whose library is an optional install: class name -> (module, how to install it).
_LOGGER_PACKAGES = {"WandbLogger": ("wandb", "pip install wandb"),
                    "MLFlowLogger": ("mlflow", "pip install mlflow-skinny")}


def _check_logger_packages(loggers: Any) -> None:
    """A chosen logger whose library is not installed: one line saying what to install (the
    logger itself would raise only when the run has started)."""
    import importlib.util

    if not isinstance(loggers, DictConfig):
        return
    for name, node in loggers.items():
        target = str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""
        cls = target.rpartition(".")[2]
        module, install = _LOGGER_PACKAGES.get(cls, (None, ""))
        if module is not None and importlib.util.find_spec(module) is None:
            raise UsageError(f"logger.{name} ({cls}) needs the {module} package, which is not "
                             f"installed: {install}")


def _walk(node: DictConfig, path: str) -> None:
    if "_target_" in node:
        _check_node(node, path)
    for key in node.keys():
        key = str(key)
        child = node._get_node(key)
        if (not key.startswith("_") and isinstance(child, DictConfig)
                and not child._is_missing() and not child._is_none()):
            _walk(child, f"{path}.{key}")


def resolve(node: DictConfig, path: str) -> tuple[str, Callable[..., Any]] | None:
    """(target, the callable it names) of a ``_target_`` node; a ``create_model`` node names
    its registered builder (``registry:<name>``). None when Hydra cannot import the target
    (Hydra reports that itself)."""
    from hydra.utils import get_object

    target = str(node._target_)
    if target in _CREATE_MODEL:
        import mlnotes_zoo.models  # noqa: F401 - registers every family
        from mlnotes_zoo.registry import get_builder, list_models

        name = node.get("name")
        if name not in list_models():
            raise UsageError(f"{path}.name={show(name)}: must be a registered model, one of "
                             f"{', '.join(list_models())}")
        return f"registry:{name}", get_builder(str(name))
    try:
        return target, get_object(target)
    except Exception:  # noqa: BLE001
        return None


def _check_node(node: DictConfig, path: str) -> None:
    resolved = resolve(node, path)
    if resolved is None:
        return
    target, obj = resolved
    params, open_kwargs = target_parameters(target, obj)
    for key in node.keys():
        key = str(key)
        if key.startswith("_") or (target.startswith("registry:") and key == "name"):
            continue
        if key in params:
            _check_value(node, key, path, params[key])
        elif not open_kwargs:
            raise UsageError(unknown(f"{path}.{key}", list(params),
                                     f"{path} ({target.removeprefix('registry:')})"))


def _check_value(node: DictConfig, key: str, path: str, param: Parameter) -> None:
    where = f"{path}.{key}" if path else key
    child = node._get_node(key)
    written = str(child._value()) if child is not None and child._is_interpolation() else ""
    try:
        value = node[key]
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
    except Exception as err:  # noqa: BLE001
        if any(s in written + str(err) for s in ("hydra:", "HydraConfig", "now:")):
            return  # resolved by Hydra when the job starts, not here
        raise UsageError(f"{where}={written or '?'}: cannot be resolved "
                         f"({str(err).splitlines()[0]})") from None
    if _has_target(value):
        return  # a nested object: checked as its own node
    problem = param.problem(value)
    if problem:
        shown = show(value) + (f" (from {written})" if written else "")
        raise UsageError(f"{where}={shown}: {problem}")


def _has_target(value: Any) -> bool:
    if isinstance(value, Mapping):
        return "_target_" in value
    return isinstance(value, list) and any(_has_target(v) for v in value)


def unknown(key: str, valid: list[str], where: str, hint: str = "",
            guesses: Mapping[str, str] | None = None) -> str:
    """"unknown key 'a.b' (did you mean 'a.c'?)" and the valid keys, in two lines;
    ``guesses``: name -> key below ``where`` for the did-you-mean (default: ``valid``)."""
    parent, _, leaf = key.rpartition(".")
    keys = [k for k in valid if not k.startswith("_")]
    guesses = guesses or {k: k for k in keys}
    close = difflib.get_close_matches(leaf, list(guesses), n=1)
    mean = (f" (did you mean {'.'.join(filter(None, [parent, guesses[close[0]]]))!r}?)"
            if close else "")
    return f"unknown key {key!r}{mean}\nvalid keys for {where}: {', '.join(keys)}{hint}"
