"""Activation checkpointing: same gradients, far fewer bytes kept for backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mlnotes_zoo import create_model, list_models
from mlnotes_zoo.scale.activation_checkpointing import (
    apply_activation_checkpointing,
    repeated_blocks,
)


class MLPBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        return x + self.fc2(nn.functional.gelu(self.fc1(x)))


class Stack(nn.Module):
    repeated_blocks = (MLPBlock,)

    def __init__(self, depth: int = 8, width: int = 32) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[MLPBlock(width) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(x)


def saved_bytes(model: nn.Module, *args) -> int:
    """Bytes autograd keeps for backward: unique storages, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*args)
    _loss(out).backward()
    return sum(storages.values())


def _loss(out) -> torch.Tensor:
    if torch.is_tensor(out):
        return out.float().square().mean()
    values = out.values() if isinstance(out, dict) else out
    return sum(_loss(o) for o in values if torch.is_tensor(o) or isinstance(o, (tuple, list, dict)))


def _grads(model: nn.Module, args, seed: int = 0) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(seed)
    _loss(model(*args)).backward()
    # parameter names without the wrapper's "_checkpoint_wrapped_module." infix
    return {n.replace("_checkpoint_wrapped_module.", ""): p.grad.clone()
            for n, p in model.named_parameters() if p.grad is not None}


def test_eight_block_stack_same_gradients_and_four_times_fewer_saved_bytes():
    torch.manual_seed(0)
    plain = Stack(depth=8)
    wrapped = copy.deepcopy(plain)
    assert apply_activation_checkpointing(wrapped) == 8
    x = torch.randn(64, 32)
    assert plain.state_dict().keys() == wrapped.state_dict().keys()  # checkpoints unaffected
    for (name, g), g2 in zip(_grads(plain, (x,)).items(), _grads(wrapped, (x,)).values(),
                             strict=True):
        torch.testing.assert_close(g2, g, msg=name)
    ratio = saved_bytes(plain, x) / saved_bytes(wrapped, x)
    assert ratio >= 4, ratio


def _block_models() -> list[str]:
    return [n for n in list_models() if repeated_blocks(create_model(n))]


def test_every_family_with_repeated_blocks_gives_identical_gradients():
    for name in _block_models():
        torch.manual_seed(0)
        plain = create_model(name).train()
        wrapped = copy.deepcopy(plain)
        assert apply_activation_checkpointing(wrapped) > 0, name
        x = plain.example_input(2)
        args = x if isinstance(x, tuple) else (x,)
        expected, got = _grads(plain, args), _grads(wrapped, args)
        assert expected.keys() == got.keys(), name
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5,
                                       msg=f"{name}: {key}")


def test_a_network_without_repeated_blocks_is_a_clear_error():
    from mlnotes_zoo.lit.vae import LitVAE

    with pytest.raises(ValueError, match="no repeated_blocks"):
        LitVAE(net=create_model("vae"), activation_checkpointing=True)
