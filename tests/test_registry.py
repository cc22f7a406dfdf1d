"""The registry contract: names <-> configs, errors, and every model's forward/backward."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types
import typing

import pytest
import torch

import mlnotes_zoo
from mlnotes_zoo import create_model, list_models, register_model
from mlnotes_zoo.config import group_options
from mlnotes_zoo.constraints import parameters


def test_every_registered_model_has_a_config_and_back():
    assert set(list_models()) == set(group_options("model"))


def test_create_model_returns_plain_module_with_kwargs():
    from mlnotes_zoo.models.vae import VAE

    model = create_model("vae", latent_dim=8)
    assert type(model) is VAE and model.latent_dim == 8
    assert model.zoo_spec == {"name": "vae", "latent_dim": 8}


def test_unknown_name_lists_registered_models():
    with pytest.raises(KeyError) as err:
        create_model("nosuch")
    assert "nosuch" in str(err.value)
    for name in list_models():
        assert name in str(err.value)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("vae")(torch.nn.Identity)


def test_unknown_kwarg_is_an_error():
    with pytest.raises(TypeError):
        create_model("vae", latnt_dim=3)


def test_kwargs_are_checked_against_the_annotated_ranges():
    # the ranges live in the builders' signatures; create_model checks every kwarg once
    with pytest.raises(ValueError, match=r"^vae: latent_dim=0: must be an integer >= 1$"):
        create_model("vae", latent_dim=0)
    with pytest.raises(ValueError, match=r"^vae: arch='transformer': must be one of 'mlp', "
                                         r"'conv'$"):
        create_model("vae", arch="transformer")
    with pytest.raises(ValueError, match=r"^vae: in_shape=\[1, 0, 8\]: must be a list of 3 "
                                         r"integers, each >= 1$"):
        create_model("vae", in_shape=[1, 0, 8])
    with pytest.raises(ValueError, match=r"^vae: in_shape=\(8, 8\): must be a list of 3 "
                                         r"integers, each >= 1$"):
        create_model("vae", in_shape=(8, 8))
    assert create_model("vae", in_shape=[1, 8, 8]).in_shape == (1, 8, 8)  # YAML gives lists


def test_models_import_without_lightning():
    # A meta-path hook makes any Lightning import fail, as if it were not installed.
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('pytorch_lightning', 'lightning', 'lightning_fabric'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import mlnotes_zoo.models
from mlnotes_zoo import create_model, list_models
for name in list_models():
    create_model(name)
assert not any(m.split('.')[0] in ('pytorch_lightning', 'lightning') for m in sys.modules)
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _tensors(out) -> list[torch.Tensor]:
    """Every floating tensor in a (nested) output: tensors, tuples, lists, dicts."""
    if torch.is_tensor(out):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _tensors(item)]
    return []


@pytest.mark.parametrize("name", list_models())
def test_forward_shapes_finite_and_every_parameter_gets_a_gradient(name):
    """Contract: ``example_input(batch_size)`` gives valid forward arguments (a tensor or a
    tuple), and the forward's outputs depend on every parameter."""
    torch.manual_seed(0)
    model = create_model(name).train()
    x = model.example_input(4)
    out = model(*x) if isinstance(x, tuple) else model(x)
    tensors = _tensors(out)
    assert tensors and all(torch.isfinite(t).all() for t in tensors)
    if not any(p.requires_grad for p in model.parameters()):
        return  # fitted without gradients (k-means, EM: buffers only): no backward to check
    loss = sum(t.float().square().mean() for t in tensors)
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f"parameters without gradient: {missing}"


def test_version():
    assert mlnotes_zoo.__version__


# -- degenerate kwargs: the API refuses what the command line refuses, in the same words ----
def _bounds(annotation) -> tuple[object, dict]:
    """(type, {'ge': .., 'min_length': ..}) of ``Annotated[type, Field(...)]``."""
    if typing.get_origin(annotation) is not typing.Annotated:
        return annotation, {}
    base, *meta = typing.get_args(annotation)
    base, bounds = _bounds(base)
    for m in meta:
        for item in (*getattr(m, "metadata", ()), m):
            bounds.update({k: getattr(item, k) for k in ("ge", "gt", "le", "lt", "min_length")
                           if getattr(item, k, None) is not None})
    return base, bounds


def _arms(annotation) -> list:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [arm for a in typing.get_args(annotation) for arm in _arms(a)]
    return [annotation]


def _outside(annotation) -> list:
    """Numbers just outside each bound of a bounded int/float annotation."""
    base, bounds = _bounds(annotation)
    if base not in (int, float):
        return []
    step = 1 if base is int else 0.5
    return [v if base is float else int(v) for k, v in (
        ("ge", bounds.get("ge", 0) - step), ("gt", bounds.get("gt")),
        ("le", bounds.get("le", 0) + step), ("lt", bounds.get("lt"))) if k in bounds]


def _degenerate(default, annotation) -> list:
    """Values ``annotation`` refuses, generated from it: each bound crossed (in a tuple: one
    element of the default crossed), an empty tuple where one item is the least, a tuple of
    the wrong length, and a value of the wrong type."""
    arms = [a for a in _arms(annotation) if a is not type(None)]
    choices = {c for a in arms if typing.get_origin(a) is typing.Literal
               for c in typing.get_args(a)}
    bad = []
    for arm in arms:
        base, bounds = _bounds(arm)
        bad += [v for v in _outside(arm) if v not in choices]
        if typing.get_origin(base) is tuple and isinstance(default, (tuple, list)) and default:
            items = typing.get_args(base)
            for element in _outside(items[0]):  # e.g. in_shape=(1, 0, 8)
                bad.append((*default[:1], element, *default[2:]) if len(default) > 1
                           else (element,))
            if items[-1] is not Ellipsis:
                bad.append((*default, default[-1]))  # one element too many
            elif bounds.get("min_length"):
                bad.append(())
        if base in (int, float):
            bad.append("abc")
        elif base is bool:
            bad.append("maybe")
        elif typing.get_origin(base) is typing.Literal:
            bad.append("nosuch")
        elif base is str:
            bad.append(3)
    return bad


def _size_cases() -> list[tuple[str, str, object]]:
    from mlnotes_zoo.registry import get_builder

    cases = []
    for name in list_models():
        builder = get_builder(name)
        signature = inspect.signature(builder)
        for key, param in parameters(builder)[0].items():
            default = signature.parameters[key].default if key in signature.parameters else None
            cases += [(name, key, bad) for bad in _degenerate(default, param.annotation)]
    return cases


SIZE_CASES = _size_cases()


def test_the_issues_examples_are_among_the_generated_cases():
    for case in [("vae", "latent_dim", 0), ("gpt", "vocab_size", 0),
                 ("vae", "in_shape", (1, 0, 8)), ("vae", "hidden", 0)]:
        assert case in SIZE_CASES
    assert len(SIZE_CASES) >= 300  # every sized, typed or chosen argument of every model


def test_every_degenerate_kwarg_is_refused_by_the_api_and_the_cli_in_the_same_words():
    """Each generated value: ``create_model`` raises ``<model>: <key>=<value>: must be …``
    (a UsageError, before anything is built) and the command line's check of the composed
    config (``model.net.<key>=<value>``) says the same ``must be …``."""
    from omegaconf import OmegaConf, open_dict

    from mlnotes_zoo.config import compose
    from mlnotes_zoo.errors import UsageError
    from mlnotes_zoo.validation import validate_config

    configs = {}
    for name, key, bad in SIZE_CASES:
        with pytest.raises(UsageError) as api:
            create_model(name, **{key: bad})
        message = str(api.value)
        assert message.startswith(f"{name}: {key}=") and ": must be " in message, message
        assert len(message.splitlines()) == 1, message
        if name not in configs:
            configs[name] = compose([f"model={name}"])
        cfg = configs[name].copy()
        with open_dict(cfg):
            OmegaConf.update(cfg, f"model.net.{key}", list(bad) if isinstance(bad, tuple)
                             else bad, merge=False)
        with pytest.raises(UsageError) as cli:
            validate_config(cfg)
        assert str(cli.value).startswith(f"model.net.{key}="), (name, key, bad, str(cli.value))
        assert message.split(": must be ")[1] == str(cli.value).split(": must be ")[1], (
            message, str(cli.value))


@pytest.mark.parametrize("override, api", [
    ("model.net.latent_dim=0", ("vae", {"latent_dim": 0})),
    ("model.net.in_shape=[1,0,8]", ("vae", {"in_shape": (1, 0, 8)})),
    ("model.net.hidden=-4", ("vae", {"hidden": -4})),
])
def test_the_train_cli_and_create_model_refuse_the_same_value(run_cli, override, api):
    code, err = run_cli(override)
    assert code == 2 and err.startswith("error: model.net."), err
    name, kwargs = api
    with pytest.raises(ValueError) as info:
        create_model(name, **kwargs)
    assert err.split(": must be ")[1] == str(info.value).split(": must be ")[1]
