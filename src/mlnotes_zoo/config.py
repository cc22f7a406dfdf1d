"""Where the Hydra configs live, and Hydra's composition errors in the zoo's words.

Hydra parses the command line (``train.py``); when an override does not fit the configs,
:func:`usage_error` turns Hydra's exception into the one or two lines a user needs: the
unknown key or option, the closest valid one and the valid choices.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig

from mlnotes_zoo.errors import UsageError

__all__ = ["config_dir", "group_options", "compose", "usage_error"]


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


def compose(overrides: list[str], *, hydra: bool = False) -> DictConfig:
    """The training config as ``train.py overrides...`` composes it (for notebooks and
    tests); ``hydra=True`` keeps the ``hydra`` node."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose("train", overrides=list(overrides), return_hydra_config=hydra)
    finally:
        GlobalHydra.instance().clear()


def usage_error(err: Exception) -> UsageError:
    """Hydra's composition or override-parsing error as one or two lines for the user."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    cause = err.__cause__
    if isinstance(err, MissingConfigException) and err.options is not None:
        group, _, name = str(err.missing_cfg_file).rpartition("/")
        close = difflib.get_close_matches(name, err.options, n=1)
        mean = f" (did you mean {close[0]!r}?)" if close else ""
        return UsageError(f"unknown {group} {name!r}{mean}\n"
                          f"valid choices for {group}: {', '.join(err.options)}")
    if isinstance(cause, OmegaConfBaseException) and isinstance(
            getattr(cause, "parent_node", None), DictConfig) and cause.full_key:
        return UsageError(_unknown_key(str(cause.full_key), cause.parent_node))
    if isinstance(err, OverrideParseException):
        return UsageError(f"cannot parse {err.override!r}: {str(err).splitlines()[0]}")
    return UsageError("\n".join(str(err).strip().splitlines()[:2]))


def _unknown_key(key: str, parent: DictConfig) -> str:
    """An override of a key the config does not have: the closest key of its node or of the
    nodes below (``model.latent_dim`` -> ``model.net.latent_dim``), or ``+key=`` for a
    parameter of the node's target that the config leaves unset."""
    from mlnotes_zoo.validation import resolve, target_parameters, unknown

    prefix, _, leaf = key.rpartition(".")
    keys = [str(k) for k in parent.keys() if str(k) != "hydra"]
    params: list[str] = []
    if "_target_" in parent:
        try:
            resolved = resolve(parent, prefix)
        except UsageError:
            resolved = None
        params = list(target_parameters(*resolved)[0]) if resolved else []
    if leaf in params:
        return f"{key} is not set in the config; add it with +{key}=<value>"
    guesses: dict[str, str] = {}
    for k in keys:  # one level down, e.g. the network's keys under model.net
        child = parent._get_node(k)
        if isinstance(child, DictConfig) and not (child._is_none() or child._is_missing()
                                                  or child._is_interpolation()):
            guesses.update({str(sub): f"{k}.{sub}" for sub in child.keys()
                            if not str(sub).startswith("_")})
    guesses.update({k: k for k in [*params, *keys]})
    return unknown(key, keys, prefix or "the config", "; add new keys with +key=value", guesses)
