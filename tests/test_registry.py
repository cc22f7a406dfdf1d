"""The registry contract: names <-> configs, errors, and every model's forward/backward."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import mlnotes_zoo
from mlnotes_zoo import create_model, list_models, register_model
from mlnotes_zoo.config import group_options


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
    loss = sum(t.float().square().mean() for t in tensors)
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f"parameters without gradient: {missing}"


def test_version():
    assert mlnotes_zoo.__version__
