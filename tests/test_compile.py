"""model.compile=true (lit/base.py): the network's forward compiled in place, the same maths,
checkpoints that load either way."""

from __future__ import annotations

import pytest
import torch

from mlnotes_zoo import create_model
from mlnotes_zoo.lit.vae import LitVAE


def _lit(compile: bool) -> LitVAE:
    torch.manual_seed(0)
    return LitVAE(net=create_model("vae", hidden=8, latent_dim=2), compile=compile)


def test_compile_is_in_place_and_checkpoints_keep_their_keys():
    compiled, eager = _lit(True), _lit(False)
    assert compiled.net._compiled_call_impl is not None  # nn.Module.compile
    assert eager.net._compiled_call_impl is None
    assert compiled.hparams["compile"] is True
    # no "_orig_mod." in the keys (as torch.compile(module) would add): checkpoints of a
    # compiled run load into an eager module and back
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    eager.load_state_dict(compiled.state_dict())


@pytest.mark.slow  # inductor compiles C++ for the CPU: ~10-60 s
def test_compiled_forward_and_gradients_equal_eager():
    import torch._inductor.config as inductor_config

    compiled, eager = _lit(True), _lit(False)
    x = compiled.net.example_input(16)
    with inductor_config.patch(fallback_random=True):  # the same ε as eager
        torch.manual_seed(1)
        got = compiled.net(x)
        torch.manual_seed(1)
        expected = eager.net(x)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        got.decoded.square().mean().backward()
        expected.decoded.square().mean().backward()
    for (name, p), q in zip(compiled.net.named_parameters(), eager.net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
