"""Bad config values: a wrong type or an out-of-range value is a one- or two-line error naming
the key, the value and what is allowed; exit code 2; no traceback; no run dir.

The checks come from the constructors' type annotations plus the range table in
``mlnotes_zoo.schema`` (one layer, not checks scattered through the code). The CLI path is
exercised in-process (``mlnotes_zoo.train.cli``, which exits before Hydra starts) for every
model and data config, and in a real subprocess (``python train.py ...``) for the examples
of the issue.
"""

from __future__ import annotations

import copy
import typing

import pytest
from omegaconf import DictConfig, OmegaConf

from mlnotes_zoo.config import _compose, check_overrides, group_options
from mlnotes_zoo.schema import (
    CONSTRAINTS,
    ConfigError,
    Range,
    _resolve_target,
    constraint_for,
    signature_params,
    validate_config,
)
from mlnotes_zoo.train import cli

# A model that trains on each data config (the data's keys feed the model's interpolations).
MODEL_FOR_DATA = {
    "digits": "vae", "mnist": "vae", "fashion_mnist": "vae", "cifar10": "vqvae",
    "coco": "mask_rcnn", "penn_fudan": "mask_rcnn", "shapes": "faster_rcnn",
    "spoken_symbols": "ctc", "librispeech": "ctc", "speech_commands": "conformer_ctc",
    "audio_folder": "ctc", "parity": "pondernet", "seq2seq_numbers": "transformer",
    "text": "gpt",
}


def _run_cli(capsys, *overrides: str) -> str:
    """``mlnotes-zoo-train overrides`` in-process: must exit 2 before Hydra starts."""
    with pytest.raises(SystemExit) as exit_info:
        cli(list(overrides))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.splitlines()) <= 2, err
    return err


def _out_of_range(rule: Range) -> float | None:
    if rule.low is not None:
        bad = rule.low if rule.low_open else rule.low - 1
    elif rule.high is not None:
        bad = rule.high if rule.high_open else rule.high + 1
    else:
        return None
    return None if bad in rule.also else bad


def _bad_values(cfg: DictConfig, section: str) -> list[tuple[str, object]]:
    """(key path, bad value) for every checked key of ``cfg.<section>``: an out-of-range
    number for each key with a range, and a wrong type for each typed scalar key."""
    cases = []

    def walk(node: DictConfig, path: str) -> None:
        resolved = _resolve_target(node, path) if "_target_" in node else None
        if resolved is not None:
            target, obj = resolved
            params, _ = signature_params(obj)
            for key, param in params.items():
                if key not in node or (target.startswith("registry:") and key == "name"):
                    continue
                try:
                    value = node[key]
                except Exception:  # noqa: BLE001 - ${hydra:...}, resolved only at run time
                    continue
                if isinstance(value, DictConfig):
                    continue
                rule = constraint_for(target, key)
                bad = _out_of_range(rule) if rule else None
                if bad is not None:
                    if isinstance(value, typing.Sequence) and not isinstance(value, str):
                        bad = [bad] * len(value)
                    cases.append((f"{path}.{key}", bad))
                ann = param.annotation
                args = typing.get_args(ann) or (ann,)
                if str in args:
                    continue  # any command-line text is a string
                if int in args or float in args:
                    cases.append((f"{path}.{key}", "abc"))
                elif bool in args:
                    cases.append((f"{path}.{key}", "maybe"))
                elif typing.get_origin(ann) is typing.Literal:
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
        with pytest.raises(ConfigError) as err:
            validate_config(broken)
        message = str(err.value)
        assert message.startswith(f"{key}=") and ": must be " in message, (key, bad, message)
        assert len(message.splitlines()) == 1, message


@pytest.mark.parametrize("model", group_options("model"))
def test_every_model_key_rejects_a_wrong_type_and_an_out_of_range_value(model):
    cfg = _compose([f"model={model}"])
    validate_config(cfg)  # the shipped values are valid
    cases = _bad_values(cfg, "model")
    assert len(cases) >= 10, cases
    _assert_each_rejected(cfg, cases)


@pytest.mark.parametrize("data", group_options("data"))
def test_every_data_key_rejects_a_wrong_type_and_an_out_of_range_value(data):
    cfg = _compose([f"model={MODEL_FOR_DATA[data]}", f"data={data}"])
    validate_config(cfg)
    cases = _bad_values(cfg, "data")
    assert len(cases) >= 3, cases
    _assert_each_rejected(cfg, cases)


def test_every_data_config_has_a_model_here():
    assert set(MODEL_FOR_DATA) == set(group_options("data"))


@pytest.mark.parametrize("option", group_options("trainer") + group_options("debug"))
def test_trainer_and_debug_configs_are_valid_and_their_numbers_checked(option):
    group = "trainer" if option in group_options("trainer") else "debug"
    cfg = _compose([f"{group}={option}"])
    validate_config(cfg)
    _assert_each_rejected(cfg, _bad_values(cfg, "trainer"))


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_shipped_experiments_are_valid(experiment):
    validate_config(_compose([f"experiment={experiment}"]))


# The examples, through the CLI entry point: key, value and what is allowed.
CLI_CASES = [
    (["model.latent_dim=-3"], ["model.net.latent_dim=-3", "integer >= 1"]),
    (["model=simclr", "model.temperature=0"], ["model.temperature=0", "> 0", "τ"]),
    (["model=supcon", "model.temperature=-0.1"], ["model.temperature=-0.1", "> 0"]),
    (["data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    (["model.optimizer.lr=0"], ["model.optimizer.lr=0", "> 0"]),
    (["model=dcgan", "model.gen_optimizer.lr=-1e-4"], ["gen_optimizer.lr=-0.0001", "> 0"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0", ">= 1 or -1"]),
    (["model.latent_dim=abc"], ["model.net.latent_dim='abc'", "integer"]),
    (["model.latent_dim=2.5"], ["model.net.latent_dim=2.5", "integer"]),
    (["model.arch=cnn"], ["model.net.arch='cnn'", "'mlp', 'conv'"]),
    (["model=gpt", "model.dropout=1.0"], ["model.net.dropout=1", "[0, 1)"]),
    (["model=pondernet", "model.lambda_p=1.5"], ["model.lambda_p=1.5", "(0, 1]"]),
    (["model=vqvae", "model.num_codes=0"], ["model.net.num_codes=0", ">= 1"]),
    (["model=glow", "model.logit_alpha=0.5"], ["model.net.logit_alpha=0.5", "(0, 0.5)"]),
    (["model=faster_rcnn", "model.rpn_nms_thresh=2"], ["rpn_nms_thresh=2", "[0, 1]"]),
    (["model=ctc", "data.sample_rate=-8000"], ["data.sample_rate=-8000", ">= 1"]),
    (["model=transformer", "model.positional=absolute"],
     ["model.net.positional='absolute'", "'sinusoidal', 'learned', 'rotary'"]),
    (["trainer.precision=15"], ["trainer.precision=15", "'16-mixed'"]),
    (["trainer.deterministic=sometimes"], ["trainer.deterministic='sometimes'", "true or false"]),
    (["seed=-1"], ["seed=-1", "in [0, 4294967295]"]),
    (["test=maybe"], ["test='maybe'", "true or false"]),
    (["model.latent_dim=4,0"], ["model.net.latent_dim=0", ">= 1"]),  # each sweep value
    (["model=vae", "model.net.name=nosuch"], ["model.net.name='nosuch'", "vae"]),
]


@pytest.mark.parametrize("overrides, expected", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_cli_exits_2_with_a_short_error_naming_key_value_and_allowed(capsys, overrides,
                                                                    expected):
    err = _run_cli(capsys, *overrides)
    for text in expected:
        assert text in err, err


@pytest.mark.parametrize("override, expected", [
    ("model.latent_dim=-3", "model.net.latent_dim=-3: must be an integer >= 1"),
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
    check_overrides(["trainer.max_epochs=-1", "model.latent_dim=1", "data.batch_size=1"])
    check_overrides(["model=gpt", "model.temperature=0", "model.dropout=0"])
    check_overrides(["model=pondernet", "model.lambda_p=1", "model.threshold=1"])
    check_overrides(["model.optimizer.lr=1e-12", "seed=null"])


def test_the_range_table_only_names_parameters_that_exist():
    """A typo in CONSTRAINTS would silently check nothing."""
    params: set[str] = set()
    for model in group_options("model"):
        params |= _all_param_names(_compose([f"model={model}"]))
    for data, model in MODEL_FOR_DATA.items():
        params |= _all_param_names(_compose([f"model={model}", f"data={data}"]))
    for option in group_options("trainer") + group_options("debug"):
        group = "trainer" if option in group_options("trainer") else "debug"
        params |= _all_param_names(_compose([f"{group}={option}"]))
    unknown = set(CONSTRAINTS) - params - {"momentum", "eps"}  # SGD's, and VQ-VAE's eps
    assert not unknown, unknown


def _all_param_names(cfg: DictConfig) -> set[str]:
    names: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, DictConfig):
            if "_target_" in node:
                resolved = _resolve_target(node, "")
                if resolved:
                    names.update(signature_params(resolved[1])[0])
            for key in node:
                child = node._get_node(str(key))
                if isinstance(child, DictConfig) and not child._is_none():
                    walk(child)

    walk(cfg)
    return names | {"seed"}


def test_values_a_library_allows_are_not_refused():
    # Lightning's ModelCheckpoint takes every_n_epochs=0 (no epoch-end checkpoints)
    from mlnotes_zoo.config import UsageError

    assert check_overrides(["+callbacks.model_checkpoint.every_n_epochs=0"])
    with pytest.raises(UsageError, match="every_n_epochs=-2: must be an integer >= 0"):
        check_overrides(["+callbacks.model_checkpoint.every_n_epochs=-2"])
