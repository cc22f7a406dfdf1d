"""Where the Hydra configs live, and a friendly check of command-line overrides.

Hydra reports a wrong override with a traceback-free but long message; this module turns
the common mistakes (an unknown group option, a misspelt key) into one or two lines that
name the valid choices, before Hydra starts.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

__all__ = ["config_dir", "group_options", "check_overrides", "UsageError"]


class UsageError(ValueError):
    """A command-line mistake; its message is meant for the user as it is."""


def config_dir() -> Path:
    """The configs shipped in the wheel (mlnotes_zoo/configs) or the repository's configs/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parents[1] / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no Hydra configs found next to {here}")


def group_options(group: str) -> list[str]:
    """Option names of a config group (``model`` -> ``["vae", ...]``)."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def _groups() -> list[str]:
    # schedule/ holds per-model trainer keys that a model config pulls in itself
    hidden = {"hydra", "schedule"}
    return sorted(p.name for p in config_dir().iterdir() if p.is_dir() and p.name not in hidden)


def check_overrides(overrides: list[str]) -> list[str]:
    """Validate ``overrides`` and expand ``model.<net key>`` to ``model.net.<net key>``.

    Raises :class:`UsageError` with a short message naming the valid choices.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args = [a for a in overrides if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException as err:
        raise UsageError(f"cannot parse overrides: {str(err).splitlines()[0]}") from None

    groups = _groups()
    choices: list[str] = []
    for o in parsed:
        key = o.key_or_group
        if key in groups and not o.is_delete():
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
            valid = group_options(key)
            for value in values:
                if value is not None and str(value) != "null" and str(value) not in valid:
                    raise UsageError(_unknown(f"{key} {str(value)!r}", str(value), valid, key))
            first = values[0]
            choices.append(f"{o.get_key_element()}={'null' if first is None else first}")

    cfg = _compose(choices)
    rewritten = {}
    for o in parsed:
        key = o.key_or_group
        if key in groups or key.startswith("hydra") or o.is_add() or o.is_force_add():
            continue
        if o.is_delete() or _has_key(cfg, key):
            continue
        if key.startswith("model.") and _has_key(cfg, "model.net." + key[len("model."):]):
            rewritten[o.input_line] = o.input_line.replace("model.", "model.net.", 1)
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig):
            raise UsageError(f"unknown key {key!r}: {parent or 'the config'} has no keys")
        valid = [str(k) for k in node.keys() if not str(k).startswith("_")]
        if parent == "model" and isinstance(node.get("net"), DictConfig):
            valid += [str(k) for k in node.net.keys() if not str(k).startswith("_") and k != "name"]
        raise UsageError(_unknown(f"key {key!r}", leaf, valid, parent or "the config",
                                  hint="; add new keys with +key=value"))
    checked = [rewritten.get(a, a) for a in overrides]
    check_values(checked)
    return checked


def check_values(overrides: list[str], *, max_composes: int = 24) -> None:
    """Compose the run's config and validate every value against the constructors' types
    and ranges (:mod:`mlnotes_zoo.schema`); each value of a sweep is composed at least once.

    Raises :class:`UsageError` naming the key, the value and what is allowed.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from mlnotes_zoo.schema import validate_config

    fixed: list[str] = []
    sweeps: list[tuple[str, list[str]]] = []
    for o in OverridesParser.create().parse_overrides(
            [a for a in overrides if not a.startswith("-")]):
        if o.key_or_group.startswith("hydra"):
            continue  # hydra.run.dir=..., hydra/launcher=...: Hydra's own settings
        if not o.is_sweep_override():
            fixed.append(o.input_line)
            continue
        try:
            values = list(o.sweep_string_iterator())
        except HydraException:
            continue  # interval()/glob() sweeps are expanded by the sweeper
        sweeps.append((o.get_key_element(), values))
    firsts = [f"{key}={values[0]}" for key, values in sweeps]
    variants = [fixed + firsts]
    for j, (key, values) in enumerate(sweeps):
        variants += [fixed + firsts[:j] + [f"{key}={v}"] + firsts[j + 1:] for v in values[1:]]
    for variant in variants[:max_composes]:
        try:
            cfg = _compose(variant)
        except HydraException as err:
            raise UsageError(f"cannot apply overrides: {str(err).splitlines()[0]}") from None
        validate_config(cfg)


def _unknown(what: str, name: str, valid: list[str], where: str, hint: str = "") -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what}{suggestion}\nvalid choices for {where}: {', '.join(valid)}{hint}"


def _has_key(cfg: DictConfig, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node._get_node(part)
    return True


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
