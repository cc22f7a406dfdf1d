"""Test a trained checkpoint: ``python eval.py ckpt_path=<ckpt> [data=...]`` (the
``mlnotes-zoo-eval`` entry point), as lightning-hydra-template's ``eval.py``.

The same Hydra configs and the same code path as ``train.py``'s test of its best checkpoint
(:func:`mlnotes_zoo.train.main`): the model built from the config, its weights loaded as
Lightning's ``trainer.test(ckpt_path=...)`` loads them (``on_load_checkpoint``, then the
state dict), from a file read with ``weights_only=True`` and checked first
(:func:`load_module`), the DataModule, the Trainer, ``trainer.test``; the test metrics go to
``metrics.json`` in a new run dir (``outputs/<model>/eval/<date>_<time>``), in train's format
(plus ``data`` and ``global_step``).

The config a checkpoint is tested with (:func:`checkpoint_overrides`), before the user's
overrides, which win:

- a checkpoint in a run dir (``<run dir>/checkpoints/<file>.ckpt`` beside
  ``<run dir>/.hydra/config.yaml``): the overrides that run was composed with
  (``.hydra/overrides.yaml``), each held to what ``resume=<run dir>`` accepts
  (:func:`mlnotes_zoo.resume.replayed_overrides`); ``data=...`` on the command line drops the
  run's own ``data`` choice and ``data.*`` values;
- any other checkpoint: its own hyper-parameters, ``model=<its network's name>`` and each
  of the network's and the module's saved values as an override.

A checkpoint that does not fit the data (:func:`check_fits_data`: a value of the model
config that the data config sets, ``${data.…}`` — image shape, vocabulary, classes, input
size — differs from the checkpoint's) is one line and exit code 2 before anything is built;
tensors whose shapes differ for another reason are refused by name when the checkpoint is
loaded (:meth:`mlnotes_zoo.lit.base.ZooModule.check_checkpoint`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mlnotes_zoo.errors import UsageError, ZooError

__all__ = ["main", "cli", "checkpoint_overrides", "check_fits_data", "DataMismatchError",
           "run_dir_of", "load_module", "group_choice",
           "compose_for_checkpoint"]


class DataMismatchError(ZooError, ValueError):
    """The checkpoint was trained on data of another shape, vocabulary or class count."""


# -- the config a checkpoint is used with --------------------------------------------------
def run_dir_of(ckpt_path: str | Path) -> Path | None:
    """The run dir that wrote ``ckpt_path`` (``<run dir>/checkpoints/<file>``), when its
    Hydra files are still beside it; else None."""
    run_dir = Path(ckpt_path).resolve().parent.parent
    hydra_dir = run_dir / ".hydra"
    if (hydra_dir / "config.yaml").is_file() and (hydra_dir / "overrides.yaml").is_file():
        return run_dir
    return None


def checkpoint_overrides(args: list[str], *, entry: str = "eval.py") -> list[str]:
    """The command line ``args`` (holding ``ckpt_path=<file>``) with the overrides that rebuild
    the checkpoint's model and data in front of it (see the module docstring)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides([a for a in args if not a.startswith("-")])
    except Exception as err:  # noqa: BLE001 - Hydra's parse errors have several types
        from mlnotes_zoo.config import usage_error

        raise usage_error(err) from None
    keys = {str(o.key_or_group): o for o in parsed}
    ckpt = keys.get("ckpt_path")
    if ckpt is None or ckpt.value() in (None, ""):
        raise UsageError(f"{entry} needs ckpt_path=<file.ckpt> (a checkpoint written by "
                         "train.py, e.g. outputs/vae/<date>_<time>/checkpoints/last.ckpt)")
    for key in ("resume", "model"):
        if key in keys:
            raise UsageError(f"{entry} takes the model from the checkpoint: remove {key}= "
                             f"({key}= belongs to train.py)")
    ckpt_path = str(ckpt.value())
    if not Path(ckpt_path).is_file():
        raise UsageError(f"ckpt_path={ckpt_path}: no such checkpoint file (a .ckpt written by "
                         "train.py, e.g. <run dir>/checkpoints/last.ckpt)")
    new_data = "data" in keys
    forced: set[str] = set()
    run_dir = run_dir_of(ckpt_path)
    if run_dir is not None:
        from mlnotes_zoo.config import check_replayed
        from mlnotes_zoo.resume import replayed_overrides

        saved = replayed_overrides(run_dir / ".hydra" / "overrides.yaml", check=check_replayed)
        kept = []
        for line, o in saved:
            key = str(o.key_or_group)
            if key in keys and (o.is_add() or o.is_force_add()):
                forced.add(key)  # the key exists only through the run's `+key=...`
            if key in ("ckpt_path", "resume", "test") or key in keys:
                continue
            if new_data and (key == "data" or key.startswith("data.")):
                continue  # the run's data values belong to its data config
            kept.append(line)
        if not any(str(o.key_or_group) == "model" for _, o in saved):
            kept.insert(0, f"model={_network_name(ckpt_path)}")
    else:
        kept = _hyper_parameter_overrides(ckpt_path)
    flags = [a for a in args if a.startswith("-")]  # -m, --cfg ...: Hydra's, in front
    given = [f"++{a.lstrip('+')}" if a.lstrip("+").split("=", 1)[0] in forced else a
             for a in args if not a.startswith("-")]
    return [*flags, *kept, *given]


def _read_hparams(ckpt_path: str) -> dict[str, Any]:
    from mlnotes_zoo.weights import UnreadableWeightsError, safe_torch_load

    checkpoint = safe_torch_load(ckpt_path, mmap=True)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    net = hparams.get("net") if isinstance(hparams, Mapping) else None
    if not isinstance(net, Mapping) or not isinstance(net.get("name"), str):
        raise UnreadableWeightsError(
            f"{ckpt_path}: no network spec (hyper_parameters['net']); it was not written by "
            "train.py")
    return dict(hparams)


def _network_name(ckpt_path: str) -> str:
    from mlnotes_zoo.config import group_options

    name = str(_read_hparams(ckpt_path)["net"]["name"])
    if name not in group_options("model"):
        raise UsageError(f"{ckpt_path} holds a {name!r} network, which has no "
                         f"configs/model/{name}.yaml here")
    return name


def _hyper_parameter_overrides(ckpt_path: str) -> list[str]:
    """``model=<name>`` and the checkpoint's saved values as overrides: the network's under
    ``model.net``, the module's under ``model`` (``+`` where the config leaves a key unset;
    keys the data config sets are left to it, and checked by :func:`check_fits_data`)."""
    from mlnotes_zoo.config import compose

    hparams = _read_hparams(ckpt_path)
    name = _network_name(ckpt_path)
    cfg = compose([f"model={name}"])
    raw = OmegaConf.to_container(cfg.model, resolve=False)
    out = [f"model={name}"]
    sections = [("model.net", raw.get("net") or {}, {k: v for k, v in hparams["net"].items()
                                                      if k != "name"}),
                ("model", raw, {k: v for k, v in hparams.items() if k != "net"})]
    for prefix, node, values in sections:
        for key, value in values.items():
            written = node.get(key, _UNSET) if isinstance(node, Mapping) else _UNSET
            if written is not _UNSET and _from_data(written):
                continue
            if isinstance(written, Mapping) or isinstance(value, Mapping):
                continue  # a nested object (an optimizer): the config's
            plus = "+" if written is _UNSET else ""
            out.append(f"{plus}{prefix}.{key}={_literal(value)}")
    return out


_UNSET = object()


def _from_data(written: Any) -> bool:
    """Whether a raw config value is (or holds) an interpolation of the data config."""
    if isinstance(written, str):
        return "${data." in written
    if isinstance(written, list):
        return any(_from_data(v) for v in written)
    return False


def _literal(value: Any) -> str:
    """``value`` as Hydra override grammar that parses back to it."""
    from mlnotes_zoo.resume import hydra_value

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    return hydra_value(str(value))


def check_fits_data(cfg: DictConfig, hparams: Mapping[str, Any], ckpt_path: str) -> None:
    """Raise :class:`DataMismatchError` when a value of ``cfg.model`` that the data config
    sets (an interpolation ``${data.…}``: image shape, vocabulary, classes, input size)
    differs from the value ``hparams`` (the checkpoint's hyper-parameters) holds."""
    data = group_choice(cfg, "data")
    for path, resolved in _data_values(cfg.model, "model"):
        parts = path.split(".")[1:]
        saved: Any = hparams
        for part in parts:
            saved = saved.get(part, _UNSET) if isinstance(saved, Mapping) else _UNSET
        if saved is _UNSET or _plain(saved) == _plain(resolved):
            continue
        raise DataMismatchError(
            f"{ckpt_path} does not fit data={data}: {path} is {_plain(resolved)} for this data "
            f"but {_plain(saved)} in the checkpoint; use the data the model was trained on "
            "(or a data config with the same values)")


def _data_values(node: DictConfig, path: str) -> list[tuple[str, Any]]:
    out = []
    for key in node.keys():
        child = node._get_node(key)
        where = f"{path}.{key}"
        if isinstance(child, DictConfig):
            if not (child._is_none() or child._is_missing()):
                out += _data_values(child, where)
            continue
        raw = (OmegaConf.to_container(child, resolve=False) if isinstance(child, ListConfig)
               else child._value())
        if _from_data(raw):
            value = node[key]
            out.append((where, OmegaConf.to_container(value, resolve=True)
                        if isinstance(value, ListConfig) else value))
    return out


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def group_choice(cfg: DictConfig, group: str) -> str | None:
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    if choices is not None and group in choices:
        return str(choices[group])
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices.get(group)
    return None


def load_module(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """The LightningModule of ``cfg.model`` with the weights of ``cfg.ckpt_path`` (read with
    ``weights_only=True``; the family, network and tensors checked), in eval mode; and the
    checkpoint. Raises the zoo's errors for a file that does not fit."""
    from hydra.utils import instantiate

    from mlnotes_zoo.weights import safe_torch_load

    checkpoint = safe_torch_load(cfg.ckpt_path)
    hparams = checkpoint.get("hyper_parameters") or {}
    check_fits_data(cfg, hparams, str(cfg.ckpt_path))
    module = instantiate(cfg.model, _convert_="all")
    module.check_family(checkpoint, source=str(cfg.ckpt_path), given={})
    module.on_load_checkpoint(checkpoint)  # the network's name and tensors, family state
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval(), checkpoint


# -- the job -------------------------------------------------------------------------------
def main(cfg: DictConfig) -> dict[str, float]:
    """Test ``cfg.ckpt_path`` on ``cfg.data`` and write ``metrics.json``; returns the metrics."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from mlnotes_zoo.runtime import apply_runtime
    from mlnotes_zoo.train import _atomic_write, _print_metrics, trainer_parts

    apply_runtime(cfg.get("runtime"))  # torch's threads, as train.py sets them
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = str(cfg.ckpt_path)
    model, checkpoint = load_module(cfg)
    datamodule = instantiate(cfg.data)
    callbacks, loggers, trainer_kwargs, plugins = trainer_parts(cfg)
    trainer_kwargs.pop("enable_model_summary", None)
    trainer = pl.Trainer(**trainer_kwargs, plugins=plugins, callbacks=callbacks,
                         logger=loggers or False, enable_model_summary=False)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        _atomic_write(output_dir / "config.yaml", OmegaConf.to_yaml(job_cfg, resolve=True))
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    if trainer.is_global_zero:
        report = {"model": group_choice(cfg, "model"), "data": group_choice(cfg, "data"),
                  "checkpoint": ckpt_path, "epochs": int(checkpoint.get("epoch", -1)) + 1,
                  "global_step": int(checkpoint.get("global_step", 0)), "metrics": metrics}
        _atomic_write(output_dir / "metrics.json", json.dumps(report, indent=2) + "\n")
        _print_metrics(metrics, output_dir)
    return metrics


def _task(cfg: DictConfig) -> None:
    from mlnotes_zoo.train import run_guarded

    run_guarded(main, cfg, "the evaluation")


def run_entry_point(config_name: str, task: Any, argv: list[str] | None, entry: str) -> None:
    """Parse ``argv`` as ``train.py`` does (paths as given), put the checkpoint's overrides in
    front (:func:`checkpoint_overrides`) and run ``task`` as a Hydra job of ``config_name``;
    a mistake of the user's is one or two lines and exit code 2."""
    import hydra
    from hydra.errors import HydraException

    from mlnotes_zoo.config import config_dir
    from mlnotes_zoo.train import (
        _exit,
        _hydra_errors_raised,
        _path_as_given,
        _quiet_third_party,
    )

    _quiet_third_party()
    try:
        args = [_path_as_given(a) for a in (sys.argv[1:] if argv is None else argv)]
        if config_name == "predict":
            args = [_value_as_given(a, "input") for a in args]
        args = checkpoint_overrides(args, entry=entry)
        if not any(a in ("-m", "--multirun") for a in args):  # a sweep: each job checks
            _check_before_run(config_name, args)
        sys.argv = [sys.argv[0], *args]
        with _hydra_errors_raised():
            hydra.main(config_path=str(config_dir()), config_name=config_name,
                       version_base="1.3")(task)()
    except (ZooError, HydraException) as err:
        _exit(err)


def _check_before_run(config_name: str, args: list[str]) -> DictConfig:
    """The composed config, :func:`check_fits_data` checked, before Hydra creates the run
    dir."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mlnotes_zoo.config import config_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name, overrides=[a for a in args if not a.startswith("-")],
                          return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    check_fits_data(cfg, _read_hparams(str(cfg.ckpt_path)), str(cfg.ckpt_path))
    return cfg


def compose_for_checkpoint(config_name: str, argv: list[str]) -> DictConfig:
    """The config ``eval.py``/``predict.py`` (``config_name`` ``eval``/``predict``) runs
    with for the command line ``argv``, for notebooks and tests; its ``paths.output_dir`` is
    Hydra's and must be set before :func:`main` or :func:`mlnotes_zoo.predict.predict`."""
    from mlnotes_zoo.train import _path_as_given

    args = [_path_as_given(a) for a in argv]
    if config_name == "predict":
        args = [_value_as_given(a, "input") for a in args]
    return _check_before_run(config_name, checkpoint_overrides(args, entry=f"{config_name}.py"))


def _value_as_given(arg: str, key: str) -> str:
    """``key=<value>`` with the value one string as typed (quoted for Hydra's grammar:
    ``input=1,0,-1`` is a vector, not a sweep; ``input=[3]`` a string)."""
    from mlnotes_zoo.resume import hydra_value

    name, eq, value = arg.partition("=")
    if name != key or not eq or value[:1] in ("'", '"'):
        return arg
    return f"{key}={hydra_value(value)}" if value else arg


def cli(argv: list[str] | None = None) -> None:
    """``mlnotes-zoo-eval ckpt_path=<file> [data=...] [overrides]``."""
    run_entry_point("eval", _task, argv, "eval.py")
