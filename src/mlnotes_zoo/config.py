"""Where the Hydra configs live, and Hydra's composition errors in the zoo's words.

Hydra parses the command line (``train.py``); when an override does not fit the configs,
:func:`usage_error` turns Hydra's exception into the one or two lines a user needs: the
unknown key or option, the closest valid one and the valid choices. :func:`check_replayed`
holds the overrides a run dir asks ``resume=<run dir>`` to replay to the config schema.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlnotes_zoo.errors import UsageError

__all__ = ["config_dir", "group_options", "compose", "usage_error", "check_replayed"]


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


def check_replayed(saved_file: Path, saved: list[tuple[str, Any]]) -> None:
    """Refuse an override of a run dir's ``.hydra/overrides.yaml`` that the zoo's configs do
    not allow (``mlnotes_zoo.resume.expand_resume`` has refused what is never data):

    - a group choice must name a file of ``configs/<group>/`` (not a path elsewhere);
    - ``+key=``/``++key=`` may only add a parameter to a node built from a target, one that
      the zoo checks the type of (a zoo constructor's parameter, or one of the typed stand-in
      parameters of :mod:`mlnotes_zoo.validation` for Lightning's and torch's classes): no new
      node (a callback, a logger), no parameter that takes an object.

    The composed config is then validated like any other (``train.CheckConfig``).
    """
    from mlnotes_zoo.resume import replay_error
    from mlnotes_zoo.validation import STAND_INS, resolve, target_parameters

    groups = {p.name for p in config_dir().iterdir() if p.is_dir() and p.name != "hydra"}
    base: list[str] = []
    adds: list[tuple[str, Any]] = []
    for line, o in saved:
        key = str(o.key_or_group)
        if key in groups:
            choices = group_options(key)
            values = o.value() if isinstance(o.value(), list) else [o.value()]
            if not all(v is None or (isinstance(v, str) and v in choices) for v in values):
                raise replay_error(saved_file, line,
                                   f"{key} must be one of configs/{key}/: {', '.join(choices)}")
            base.append(line)
        elif (o.is_add() or o.is_force_add()) and key not in ("ckpt_path", "resume"):
            adds.append((line, o))
        elif not o.is_delete() and key not in ("ckpt_path", "resume"):
            base.append(line)
    if not adds:
        return
    try:
        cfg = compose(base)
    except Exception as err:  # noqa: BLE001 - Hydra's composition errors have several types
        raise replay_error(saved_file, " ".join(base),
                           f"these do not compose ({usage_error(err).args[0].splitlines()[0]})"
                           ) from None
    for line, o in adds:
        prefix, _, leaf = str(o.key_or_group).rpartition(".")
        node = OmegaConf.select(cfg, prefix, throw_on_missing=False) if prefix else cfg
        if isinstance(node, DictConfig) and leaf in node and o.is_force_add():
            continue  # ++ of an existing key: a plain set
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise replay_error(saved_file, line, f"it adds a new node ({prefix or leaf} is not "
                                                 "a node of the configs built from a target)")
        resolved = resolve(node, prefix)
        target = resolved[0] if resolved else str(node._target_)
        if resolved and (target.startswith(("registry:", "mlnotes_zoo."))):
            params = target_parameters(*resolved)[0]
        else:
            from mlnotes_zoo.constraints import parameters

            params = parameters(STAND_INS[target])[0] if target in STAND_INS else {}
        if leaf not in params:
            raise replay_error(saved_file, line, f"{leaf} is not a parameter of {prefix} "
                                                 f"({target.removeprefix('registry:')}) that "
                                                 "the zoo checks the type of")


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
        first = f"cannot parse {err.override!r}: {str(err).splitlines()[0]}"
        key, eq, value = str(err.override or "").partition("=")
        if eq and value and value[:1] not in "'\"":
            # e.g. a path with "=": Hydra's grammar reads it; quoted, it is one string
            return UsageError(f"{first}\nquote a value that holds = , [ ] {{ }} ( ) or quotes: "
                              f"{key}='\"{value}\"' (shell quotes around Hydra's)")
        return UsageError(first)
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
