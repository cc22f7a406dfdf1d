"""Typed validation of a composed config, before anything is built.

The constructors are the schema: every config node with a ``_target_`` is checked against
its target's signature (the keyword-only, typed arguments the style guide asks for), so the
types live in one place and a new argument is validated the day it is added.

- each key must be a parameter of the target (or of the base class it passes ``**kwargs``
  to); ``mlnotes_zoo.create_model`` nodes are checked against the registered builder;
- each value must fit the parameter's annotation: ``int``, ``float``, ``bool``, ``str``,
  ``Literal[...]`` choices, ``tuple``/``list`` of those, ``X | None``; a nested node with a
  ``_target_`` is checked as its own node, and annotations this module cannot read
  (callables, type variables) accept anything;
- numbers whose parameter name appears in :data:`CONSTRAINTS` must lie in its range
  (``latent_dim >= 1``, ``lr > 0``, ``dropout`` in [0, 1), ...), elementwise for lists.

A problem is a :class:`ConfigError` (a :class:`~mlnotes_zoo.config.UsageError`) whose message
is one line naming the key, the value and what is allowed::

    model.net.latent_dim=-3: must be an integer >= 1
    model.temperature=0: must be a number > 0 (the contrastive temperature τ)

:func:`mlnotes_zoo.config.check_overrides` runs :func:`validate_config` on the composed
config before Hydra starts, so the command line exits with code 2 and creates no run dir.
Checks that involve two values (``block_size <= max_len``, ``num_classes`` against the
annotation file) stay in the constructors and ``setup`` methods that know both.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mlnotes_zoo.config import UsageError

__all__ = ["ConfigError", "Range", "CONSTRAINTS", "validate_config", "check_value"]


class ConfigError(UsageError):
    """A config value of the wrong type or out of range; the message names key and value."""


@dataclass(frozen=True)
class Range:
    """Allowed numbers: ``low``/``high`` bounds (open or closed) plus ``also`` exceptions."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple[float, ...] = ()
    note: str = ""

    def allows(self, x: float) -> bool:
        if x in self.also:
            return True
        if math.isnan(x):
            return False
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return not (self.high is not None and (x >= self.high if self.high_open else
                                                x > self.high))

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = (f"in {'(' if self.low_open else '['}{_num(self.low)}, "
                    f"{_num(self.high)}{')' if self.high_open else ']'}")
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {_num(self.high)}"
        else:
            text = "any number"
        if self.also:
            text += " or " + " or ".join(_num(a) for a in self.also)
        return text + (f" ({self.note})" if self.note else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE = Range(low=0, low_open=True)  # > 0
AT_LEAST_1 = Range(low=1)
NON_NEGATIVE = Range(low=0)
FRACTION = Range(low=0, high=1)  # [0, 1]
UNIT_OPEN = Range(low=0, high=1, high_open=True)  # [0, 1)
PROBABILITY_POSITIVE = Range(low=0, high=1, low_open=True)  # (0, 1]

# Ranges by parameter name, for every target that has a parameter of that name. A dict maps
# a target's qualified name (or "*" for the rest) to its own range, where one name means
# different things in different places.
CONSTRAINTS: dict[str, Range | dict[str, Range]] = {
    # sizes of networks and data
    **dict.fromkeys([
        "latent_dim", "hidden", "dim", "embedding_dim", "num_codes", "num_heads", "num_layers",
        "encoder_layers", "decoder_layers", "depth", "num_levels", "num_scales",
        "num_couplings", "num_stages", "gen_width", "disc_width", "proj_dim", "proj_hidden",
        "conv_channels", "n_mels", "vocab_size", "max_len", "block_size", "mlp_ratio",
        "ffn_dim", "in_features", "out_features", "max_steps", "residual_hidden",
        "blocks_per_stage", "kernel_size", "in_shape", "widths", "image_size",
        "backbone_stem_channels", "backbone_stage_channels", "backbone_stage_blocks",
        "backbone_out_channels", "rpn_anchor_sizes", "rpn_conv_depth",
        "box_roi_output_size", "box_representation_size", "mask_roi_output_size",
        "mask_layers", "mask_dilation", "mask_dim_reduced", "sample_rate", "min_sample_rate",
        "n_elems", "train_max_nonzero", "max_value", "n_critic", "beam_width", "top_k",
        "knn_k", "labels_per_class", "few_shot_draws", "iwae_samples", "batch_size",
        "train_size", "val_size", "test_size", "num_train", "num_val", "num_test",
        "train_samples", "min_objects", "max_objects", "min_shape_size", "max_shape_size",
        "min_symbols", "max_symbols", "classifier_steps", "fid_max_samples", "sample_length",
        "prompt_length", "num_samples", "num_nodes", "log_every_n_steps",
        "check_val_every_n_epoch", "T_max",
        "rpn_batch_size_per_image", "box_batch_size_per_image", "rpn_pre_nms_top_n_train",
        "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test",
        "box_detections_per_img",
    ], AT_LEAST_1),
    "num_residual_blocks": NON_NEGATIVE, "num_downsamples": NON_NEGATIVE,
    "embed_dim": NON_NEGATIVE, "restart_after": NON_NEGATIVE, "num_workers": NON_NEGATIVE,
    "num_pictures": NON_NEGATIVE, "max_utterances": NON_NEGATIVE, "patience": NON_NEGATIVE,
    "every_n_epochs": Range(low=0, note="0: no epoch-end checkpoints (ModelCheckpoint)"),
    "freq_mask": NON_NEGATIVE, "time_mask": NON_NEGATIVE, "n_freq_masks": NON_NEGATIVE,
    "n_time_masks": NON_NEGATIVE, "box_sampling_ratio": NON_NEGATIVE,
    "mask_sampling_ratio": NON_NEGATIVE, "min_size": NON_NEGATIVE, "max_size": AT_LEAST_1,
    "win_ms": POSITIVE, "hop_ms": POSITIVE, "noise": NON_NEGATIVE,
    **dict.fromkeys(["seed", "split_seed", "eval_seed"], Range(low=0, high=2**32 - 1)),
    "max_epochs": Range(low=1, also=(-1,), note="-1: no limit"),
    "save_top_k": Range(low=-1),
    "levels": Range(low=2, note="discrete pixel levels"),
    "devices": Range(low=1, also=(-1,), note="-1: all"),
    "num_classes": Range(low=2, note="object classes + background"),
    "pad_id": NON_NEGATIVE, "bos_id": NON_NEGATIVE, "eos_id": NON_NEGATIVE,
    # optimisation
    "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "eps": POSITIVE, "momentum": NON_NEGATIVE,
    "betas": UNIT_OPEN, "gradient_clip_val": NON_NEGATIVE, "grad_clip": POSITIVE,
    "gp_weight": NON_NEGATIVE, "beta": NON_NEGATIVE, "probe_c": POSITIVE,
    "dropout": UNIT_OPEN, "decay": UNIT_OPEN,
    # temperatures: τ of a softmax must be > 0; a sampling temperature may be 0 (greedy)
    "temperature": {"mlnotes_zoo.lit.simclr.LitSimCLR": Range(
                        low=0, low_open=True, note="the contrastive temperature τ"),
                    "mlnotes_zoo.lit.flows.LitFlow": POSITIVE,
                    "*": Range(low=0, note="0: greedy")},
    # probabilities and fractions
    "lambda_p": PROBABILITY_POSITIVE, "threshold": PROBABILITY_POSITIVE,
    "logit_alpha": Range(low=0, high=0.5, low_open=True, high_open=True),
    "val_fraction": UNIT_OPEN, "test_fraction": UNIT_OPEN, "max_occlusion": FRACTION,
    "coverage_min_share": FRACTION, "stop_at_exact_match": FRACTION,
    "mask_threshold": FRACTION, "picture_score_threshold": FRACTION,
    "rpn_fg_iou_thresh": FRACTION, "rpn_bg_iou_thresh": FRACTION,
    "rpn_positive_fraction": FRACTION, "rpn_nms_thresh": FRACTION,
    "rpn_score_thresh": FRACTION, "box_fg_iou_thresh": FRACTION,
    "box_bg_iou_thresh": FRACTION, "box_positive_fraction": FRACTION,
    "box_score_thresh": FRACTION, "box_nms_thresh": FRACTION,
    "image_mean": FRACTION, "image_std": POSITIVE, "rpn_aspect_ratios": POSITIVE,
}


def constraint_for(target: str, key: str) -> Range | None:
    rule = CONSTRAINTS.get(key)
    if isinstance(rule, dict):
        return rule.get(target, rule.get("*"))
    return rule


# -- signatures ----------------------------------------------------------------------------
_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class _Param:
    annotation: Any  # a resolved type, or _MISSING when unknown


def _resolve_target(node: DictConfig, path: str = "") -> tuple[str, Callable[..., Any]] | None:
    from hydra.utils import get_object

    target = str(node._target_)
    if target in ("mlnotes_zoo.create_model", "mlnotes_zoo.registry.create_model"):
        from mlnotes_zoo.registry import get_builder, list_models

        name = node.get("name")
        if name not in list_models():
            raise ConfigError(f"{path}.name={_show(name)}: must be a registered model, one of "
                              f"{', '.join(list_models())}")
        return f"registry:{name}", get_builder(str(name))
    try:
        return target, get_object(target)
    except Exception:  # noqa: BLE001 (Hydra reports a target it cannot import itself)
        return None


def _annotations(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=False)
    except Exception:  # noqa: BLE001 - forward references to names under TYPE_CHECKING
        hints = {}
        module = inspect.getmodule(fn)
        for name, ann in getattr(fn, "__annotations__", {}).items():
            if isinstance(ann, str):
                try:
                    ann = eval(ann, vars(module) if module else {})  # noqa: S307
                except Exception:  # noqa: BLE001
                    continue
            hints[name] = ann
        return hints


@functools.cache
def signature_params(obj: Callable[..., Any]) -> tuple[dict[str, _Param], bool]:
    """Keyword parameters of a class or function, following ``**kwargs`` into base classes.

    Returns (parameters, open) where ``open`` means unknown keys are accepted.
    """
    params: dict[str, _Param] = {}
    functions = ([c.__dict__["__init__"] for c in obj.__mro__ if "__init__" in c.__dict__]
                 if inspect.isclass(obj) else [obj])
    for fn in functions:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return params, True
        hints = _annotations(fn)
        var_keyword = False
        for name, p in sig.parameters.items():
            if p.kind is p.VAR_KEYWORD:
                var_keyword = True
            elif p.kind is not p.VAR_POSITIONAL and name != "self" and name not in params:
                params[name] = _Param(hints.get(name, _MISSING))
        if not var_keyword:
            return params, False
        if fn is object.__init__:
            break
    return params, True


# -- values --------------------------------------------------------------------------------
def _is_instantiable(value: Any) -> bool:
    return isinstance(value, Mapping) and "_target_" in value


def _describe_type(annotation: Any) -> str | None:
    """'an integer', "one of 'mlp', 'conv'", 'a list of integers' ... or None if unknown."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        choices = [c for a in arms if typing.get_origin(a) is typing.Literal
                   for c in typing.get_args(a)]
        texts = [_describe_type(a) for a in arms if typing.get_origin(a) is not typing.Literal]
        if choices:
            texts.append("one of " + ", ".join(repr(c) for c in dict.fromkeys(choices)))
        if any(t is None for t in texts):
            return None
        text = " or ".join(dict.fromkeys(texts))
        return text + " or null" if len(arms) < len(args) else text
    if origin in (tuple, list, Sequence, typing.Sequence) or annotation in (tuple, list):
        if (len(args) == 2 and args[1] is Ellipsis) or (origin is not tuple and args):
            inner = _describe_type(args[0])
            return None if inner is None else f"a list of {_plural(inner)}"
        if args:
            inner = [_describe_type(a) for a in args]
            return None if None in inner else f"a list of {len(args)} ({', '.join(inner)})"
        return "a list"
    if origin in (dict, Mapping, typing.Mapping) or annotation in (dict,):
        return "a mapping"
    if inspect.isclass(annotation):
        name = annotation.__name__
        return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"
    return None


def _plural(text: str) -> str:
    for single, plural in (("an integer", "integers"), ("a number", "numbers"),
                           ("a string", "strings"), ("true or false", "booleans")):
        text = text.replace(single, plural)
    return text


def _fits(value: Any, annotation: Any) -> bool | None:
    """Does ``value`` (plain YAML data) fit ``annotation``? None when it cannot tell."""
    if annotation is _MISSING or annotation is Any:
        return None
    if _is_instantiable(value):
        return None  # a nested object; validated as its own node
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        results = [_fits(value, a) for a in args]
        if any(r is True for r in results):
            return True
        return None if any(r is None for r in results) else False
    if origin in (tuple, list, Sequence, typing.Sequence) or annotation in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                return False
            results = [_fits(v, a) for v, a in zip(value, args, strict=True)]
        else:
            results = [_fits(v, args[0]) for v in value] if args else []
        if any(r is False for r in results):
            return False
        return None if any(r is None for r in results) else True
    if origin in (dict, Mapping, typing.Mapping) or annotation is dict:
        return isinstance(value, Mapping)
    if inspect.isclass(annotation) and origin is None:
        # YAML gives plain data: it is an instance of a class only if the class is a plain
        # type (or a path, which strings stand for)
        return isinstance(value, annotation) or (
            isinstance(value, str) and issubclass(annotation, os.PathLike))
    return None


def _numbers(value: Any) -> list[float]:
    """The numbers in a value (itself, or the leaves of nested lists); booleans are not."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v)]
    return []


def _number_text(annotation: Any) -> tuple[str | None, bool]:
    """('an integer' | 'a number' | None, may be null) for int, float, X | None, float | Tensor."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (
        typing.Union, types.UnionType) else (annotation,)
    optional = type(None) in args
    if float in args:
        return "a number", optional
    return ("an integer" if int in args else None), optional


def check_value(target: str, key: str, value: Any, annotation: Any = _MISSING) -> str | None:
    """What is wrong with ``key=value`` for ``target``, as 'must be ...', or None."""
    rule = constraint_for(target, key)
    number, optional = _number_text(annotation)
    if _fits(value, annotation) is False:
        if rule is not None and number is not None:
            return f"must be {number} {rule.describe()}" + (", or null" if optional else "")
        type_text = _describe_type(annotation)
        return f"must be {type_text or 'of type ' + repr(annotation)}"
    if rule is not None and any(not rule.allows(float(x)) for x in _numbers(value)):
        if isinstance(value, (list, tuple)):
            number = "a list of numbers, each"
        return f"must be {number or 'a number'} {rule.describe()}"
    return None


# -- the walk ------------------------------------------------------------------------------
# Validated in this order, so that a bad trainer.max_epochs is reported as itself and not as
# the model's scheduler key that interpolates it.
SECTIONS = ("trainer", "data", "model", "callbacks", "logger")

# Keys of configs/train.yaml itself, which no constructor reads.
TOP_LEVEL: dict[str, Any] = {"seed": int | None, "ckpt_path": str | None, "resume": str | None,
                             "test": bool}


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` on the first wrong-typed or out-of-range value in ``cfg``."""
    for key, annotation in TOP_LEVEL.items():
        if key in cfg:
            ok, value, written = _value(cfg, key, "")
            problem = check_value("train", key, value, annotation) if ok else None
            if problem:
                raise ConfigError(f"{key}={_show(value)}: {problem}")
    for section in SECTIONS:
        node = cfg.get(section) if isinstance(cfg, DictConfig) else None
        if isinstance(node, DictConfig):
            _walk(node, section)


def _walk(node: DictConfig, path: str) -> None:
    if "_target_" in node:
        _check_node(node, path)
    for key in node.keys():
        key = str(key)
        if key.startswith("_"):
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _walk(child, f"{path}.{key}")


def _value(node: DictConfig, key: str, path: str) -> tuple[bool, Any, str]:
    """(ok, plain value, how it was written) of ``node[key]``; ok=False: cannot resolve."""
    child = node._get_node(key)
    written = ""
    if child is not None and child._is_interpolation():
        written = str(child._value())
    try:
        value = node[key]
    except Exception as err:  # noqa: BLE001
        if any(s in written + str(err) for s in ("hydra:", "HydraConfig", "now:")):
            return False, None, written  # resolved by Hydra at run time, not here
        raise ConfigError(f"{f'{path}.' if path else ''}{key}={written}: cannot be resolved "
                          f"({str(err).splitlines()[0]})") from None
    if isinstance(value, (DictConfig, ListConfig)):
        try:
            value = OmegaConf.to_container(value, resolve=True)
        except Exception:  # noqa: BLE001
            return False, None, written
    return True, value, written


def _check_node(node: DictConfig, path: str) -> None:
    resolved = _resolve_target(node, path)
    if resolved is None:
        return
    target, obj = resolved
    params, open_kwargs = signature_params(obj)
    for key in node.keys():
        key = str(key)
        if key.startswith("_") or (target.startswith("registry:") and key == "name"):
            continue
        param = params.get(key)
        if param is None:
            if open_kwargs:
                continue
            valid = ", ".join(k for k in params if not k.startswith("_"))
            raise ConfigError(f"unknown key {path}.{key} for {target.removeprefix('registry:')}"
                              f"\nvalid keys: {valid}")
        ok, value, written = _value(node, key, path)
        if not ok or _is_instantiable(value):
            continue
        problem = check_value(target, key, value, param.annotation)
        if problem:
            shown = _show(value) + (f" (from {written})" if written else "")
            raise ConfigError(f"{path}.{key}={shown}: {problem}")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    return str(value).replace("'", "")
