"""Bad config values: a wrong type or an out-of-range value is a one- or two-line error naming
the key, the value and what is allowed; exit code 2; no traceback; no run dir.

The checks come from the constructors' annotations (types, ``Literal`` choices, the ranges of
``mlnotes_zoo.constraints``) and the typed stand-ins of ``mlnotes_zoo.validation`` for
third-party targets: one layer, not checks scattered through the code. The cases below are
generated from those annotations for every model, data, trainer and debug config and checked
through the validation the CLI runs; the CLI itself runs in-process (``mlnotes_zoo.train.cli``,
which exits before the run dir exists) for the examples of the issue, and in a real
subprocess (``python train.py ...``) for two of them.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Sequence

import pytest
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from mlnotes_zoo.config import compose, group_options
from mlnotes_zoo.constraints import parameters
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.validation import STAND_INS, resolve, target_parameters, validate_config

# A model that trains on each data config (the data's keys feed the model's interpolations).
MODEL_FOR_DATA = {
    "digits": "vae", "mnist": "vae", "fashion_mnist": "vae", "cifar10": "vqvae",
    "coco": "mask_rcnn", "penn_fudan": "mask_rcnn", "shapes": "faster_rcnn",
    "spoken_symbols": "ctc", "librispeech": "ctc", "speech_commands": "conformer_ctc",
    "audio_folder": "ctc", "parity": "pondernet", "seq2seq_numbers": "transformer",
    "text": "gpt",
    "toy2d": "cnf", "irregular_series": "latent_ode", "spoken_symbols_1k": "hubert",
    "spoken_symbols_100": "hubert_ctc",
}


def _cli_error(run_cli, *overrides: str) -> str:
    """``mlnotes-zoo-train overrides`` in-process: must exit 2 before the run starts."""
    code, err = run_cli(*overrides)
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.splitlines()) <= 2, err
    return err


def _arms(annotation) -> list:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [arm for a in typing.get_args(annotation) for arm in _arms(a)]
    return [annotation]


def _base(annotation):
    """(type, bounds) of ``Annotated[type, Field(ge=..., ...)]``."""
    if typing.get_origin(annotation) is not typing.Annotated:
        return annotation, {}
    base, *meta = typing.get_args(annotation)
    base, bounds = _base(base)
    for m in meta:
        for item in (*getattr(m, "metadata", ()), m):
            bounds.update({k: getattr(item, k) for k in ("ge", "gt", "le", "lt")
                           if getattr(item, k, None) is not None})
    return base, bounds


def _out_of_range(annotation) -> float | None:
    """A number just outside the range of the annotation's first bounded numeric arm (and of
    none of its choices): ge=1 -> 0, gt=0 -> 0, lt=1 -> 1, le=1 -> 2."""
    arms = _arms(annotation)
    choices = {c for a in arms if typing.get_origin(a) is typing.Literal
               for c in typing.get_args(a)}
    for arm in arms:
        base, bounds = _base(arm)
        if typing.get_origin(base) in (tuple, list) or base in (tuple, list):
            inner = [a for a in typing.get_args(base) if a is not Ellipsis]
            return _out_of_range(inner[0]) if inner else None
        if base not in (int, float) or not bounds:
            continue
        if "ge" in bounds:
            bad = bounds["ge"] - 1
        elif "gt" in bounds:
            bad = bounds["gt"]
        elif "le" in bounds:
            bad = bounds["le"] + 1
        else:
            bad = bounds["lt"]
        return None if bad in choices else (int(bad) if base is int else bad)
    return None


def _bad_values(cfg: DictConfig, section: str) -> list[tuple[str, object]]:
    """(key path, bad value) for every checked key of ``cfg.<section>``: an out-of-range
    number for each key with a range, and a wrong type for each typed scalar key."""
    cases = []

    def walk(node: DictConfig, path: str) -> None:
        resolved = resolve(node, path) if "_target_" in node else None
        if resolved is not None:
            target, obj = resolved
            for key, param in target_parameters(target, obj)[0].items():
                if key not in node or (target.startswith("registry:") and key == "name"):
                    continue
                try:
                    value = node[key]
                except Exception:  # noqa: BLE001 - ${hydra:...}, resolved only at run time
                    continue
                if isinstance(value, DictConfig):
                    continue
                bad = _out_of_range(param.annotation)
                if bad is not None:
                    if isinstance(value, Sequence) and not isinstance(value, str):
                        bad = [bad] * len(value)
                    cases.append((f"{path}.{key}", bad))
                bases = [_base(a)[0] for a in _arms(param.annotation)]
                if str in bases:
                    continue  # any command-line text is a string
                lists = [b for b in bases if b in (tuple, list)
                         or typing.get_origin(b) in (tuple, list, Sequence)]
                if int in bases or float in bases or lists:
                    cases.append((f"{path}.{key}", "abc"))
                elif bool in bases:
                    cases.append((f"{path}.{key}", "maybe"))
                elif any(typing.get_origin(b) is typing.Literal for b in bases):
                    cases.append((f"{path}.{key}", "nosuch"))
        for key in node:
            child = node._get_node(str(key))
            if isinstance(child, DictConfig) and not str(key).startswith("_") \
                    and not child._is_none():
                walk(child, f"{path}.{key}")

    walk(cfg[section], section)
    return cases


def _assert_each_rejected(cfg: DictConfig, cases: list[tuple[str, object]]) -> None:
    for key, bad in cases:
        broken = copy.deepcopy(cfg)
        OmegaConf.update(broken, key, bad, merge=False)
        with pytest.raises(UsageError) as err:
            validate_config(broken)
        message = str(err.value)
        assert message.startswith(f"{key}=") and ": must be " in message, (key, bad, message)
        assert len(message.splitlines()) == 1, message


@pytest.mark.parametrize("model", group_options("model"))
def test_every_model_key_rejects_a_wrong_type_and_an_out_of_range_value(model):
    cfg = compose([f"model={model}"])
    validate_config(cfg)  # the shipped values are valid
    cases = _bad_values(cfg, "model")
    assert len(cases) >= 10, cases
    _assert_each_rejected(cfg, cases)


@pytest.mark.parametrize("data", group_options("data"))
def test_every_data_key_rejects_a_wrong_type_and_an_out_of_range_value(data):
    cfg = compose([f"model={MODEL_FOR_DATA[data]}", f"data={data}"])
    validate_config(cfg)
    cases = _bad_values(cfg, "data")
    assert len(cases) >= 3, cases
    _assert_each_rejected(cfg, cases)


def test_every_data_config_has_a_model_here():
    assert set(MODEL_FOR_DATA) == set(group_options("data"))


@pytest.mark.parametrize("option", group_options("trainer") + group_options("debug"))
def test_trainer_and_debug_configs_are_valid_and_their_numbers_checked(option):
    group = "trainer" if option in group_options("trainer") else "debug"
    cfg = compose([f"{group}={option}"])
    validate_config(cfg)
    _assert_each_rejected(cfg, _bad_values(cfg, "trainer"))


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_every_callback_and_logger_key_rejects_a_wrong_type_and_an_out_of_range_value(group):
    cases = []
    for option in group_options(group):
        cfg = compose([f"{group}={option}"])
        validate_config(cfg)
        cases += (option_cases := _bad_values(cfg, group))
        _assert_each_rejected(cfg, option_cases)
    assert len(cases) >= {"callbacks": 10, "logger": 2}[group], cases


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_shipped_experiments_are_valid(experiment):
    validate_config(compose([f"experiment={experiment}"]))


# The examples, through the CLI entry point: key, value and what is allowed.
CLI_CASES = [
    (["model.net.latent_dim=-3"], ["model.net.latent_dim=-3", "integer >= 1"]),
    (["model=simclr", "model.temperature=0"], ["model.temperature=0", "> 0", "τ"]),
    (["model=supcon", "model.temperature=-0.1"], ["model.temperature=-0.1", "> 0"]),
    (["data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    (["model.optimizer.lr=0"], ["model.optimizer.lr=0", "> 0"]),
    (["model=dcgan", "model.gen_optimizer.lr=-1e-4"], ["gen_optimizer.lr=-0.0001", "> 0"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0", ">= 1 or -1"]),
    (["model.net.latent_dim=abc"], ["model.net.latent_dim='abc'", "integer"]),
    (["model.net.latent_dim=2.5"], ["model.net.latent_dim=2.5", "integer"]),
    (["model.net.arch=cnn"], ["model.net.arch='cnn'", "'mlp', 'conv'"]),
    (["model=gpt", "model.net.dropout=1.0"], ["model.net.dropout=1", "[0, 1)"]),
    (["model=pondernet", "model.lambda_p=1.5"], ["model.lambda_p=1.5", "(0, 1]"]),
    (["model=vqvae", "model.net.num_codes=0"], ["model.net.num_codes=0", ">= 1"]),
    (["model=glow", "model.net.logit_alpha=0.5"], ["model.net.logit_alpha=0.5", "(0, 0.5)"]),
    (["model=faster_rcnn", "model.net.rpn_nms_thresh=2"], ["rpn_nms_thresh=2", "[0, 1]"]),
    (["model=ctc", "data.sample_rate=-8000"], ["data.sample_rate=-8000", ">= 1"]),
    (["model=transformer", "model.net.positional=absolute"],
     ["model.net.positional='absolute'", "'sinusoidal', 'learned', 'rotary'"]),
    (["trainer.precision=15"], ["trainer.precision=15", "'16-mixed'"]),
    (["trainer.deterministic=sometimes"], ["trainer.deterministic='sometimes'", "true or false"]),
    (["seed=-1"], ["seed=-1", "in [0, 4294967295]"]),
    (["test=maybe"], ["test='maybe'", "true or false"]),
    (["-m", "model.net.latent_dim=4,0"], ["model.net.latent_dim=0", ">= 1"]),  # each sweep value
    (["model=vae", "model.net.name=nosuch"], ["model.net.name='nosuch'", "vae"]),
]


@pytest.mark.parametrize("overrides, expected", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_cli_exits_2_with_a_short_error_naming_key_value_and_allowed(run_cli, overrides,
                                                                    expected):
    err = _cli_error(run_cli, *overrides)
    for text in expected:
        assert text in err, err


@pytest.mark.parametrize("override, expected", [
    ("model.net.latent_dim=-3", "model.net.latent_dim=-3: must be an integer >= 1"),
    ("data.batch_size=0", "data.batch_size=0: must be an integer >= 1"),
])
def test_train_py_subprocess_exits_2_without_traceback_or_run_dir(run_train, tmp_path, override,
                                                                  expected):
    out = run_train(override, cwd=tmp_path, timeout=180)
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip()
    assert err == f"error: {expected}", err
    assert not (tmp_path / "outputs").exists()


def test_valid_values_at_the_edges_of_their_ranges_pass():
    validate_config(compose(["trainer.max_epochs=-1", "model.net.latent_dim=1",
                             "data.batch_size=1"]))
    validate_config(compose(["model=gpt", "model.temperature=0", "model.net.dropout=0"]))
    validate_config(compose(["model=pondernet", "model.lambda_p=1", "model.threshold=1"]))
    validate_config(compose(["model.optimizer.lr=1e-12", "seed=null"]))


def test_stand_ins_only_name_parameters_that_exist():
    """A typo in a stand-in signature would silently check nothing."""
    top = set(compose([]))
    for target, stand_in in STAND_INS.items():
        named = set(parameters(stand_in)[0])
        takes = top if target == "train.yaml" else set(parameters(get_object(target))[0])
        assert named <= takes, (target, named - takes)
        for param in parameters(stand_in)[0].values():
            assert param.adapter is not None, (target, param.name)  # pydantic can check it


def test_values_a_library_allows_are_not_refused():
    # Lightning's ModelCheckpoint takes every_n_epochs=0 (no epoch-end checkpoints)
    validate_config(compose(["+callbacks.model_checkpoint.every_n_epochs=0"]))
    with pytest.raises(UsageError, match="every_n_epochs=-2: must be an integer >= 0"):
        validate_config(compose(["+callbacks.model_checkpoint.every_n_epochs=-2"]))
