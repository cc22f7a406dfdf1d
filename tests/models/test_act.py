"""Adaptive Computation Time: N, R and p by hand, Σ p = 1, the ponder cost's gradient
(Graves 2016, eq. 12), the network against its recurrence written out, and a tiny run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mlnotes_zoo import create_model
from mlnotes_zoo.models.act import ACT, act_halting, act_loss


def _net(**kwargs) -> ACT:
    torch.manual_seed(0)
    return create_model("act", **{"in_features": 6, "hidden": 8, "max_steps": 5,
                                  "embed_dim": 0, **kwargs})


def _column(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)[:, None]  # (n, 1)


@pytest.mark.parametrize("h, eps, n, r, p", [
    # Σh: 0.3, 0.8, 0.95, 1.35 → 0.95 < 0.99, so N = 4 and R = 1 − 0.95
    ((0.3, 0.5, 0.15, 0.4), 0.01, 4, 0.05, (0.3, 0.5, 0.15, 0.05)),
    # with ε = 0.1, 0.95 ≥ 0.9 already: N = 3, R = 1 − 0.8, nothing after
    ((0.3, 0.5, 0.15, 0.4), 0.1, 3, 0.2, (0.3, 0.5, 0.2, 0.0)),
    # a first h ≥ 1 − ε halts at once with R = 1
    ((0.995, 0.5, 0.5), 0.01, 1, 1.0, (1.0, 0.0, 0.0)),
    # never reaching 1 − ε: the last step halts, R = 1 − 0.3
    ((0.1, 0.1, 0.1, 0.1), 0.01, 4, 0.7, (0.1, 0.1, 0.1, 0.7)),
])
def test_n_r_and_p_match_a_hand_computation(h, eps, n, r, p):
    out = act_halting(_column(*h), epsilon=eps)
    assert out.steps.tolist() == [n]
    torch.testing.assert_close(out.remainder, torch.tensor([r], dtype=torch.float64))
    torch.testing.assert_close(out.halting_probs, _column(*p))


def test_halting_probabilities_sum_to_one_and_n_is_the_first_crossing():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(7, 200, generator=g, dtype=torch.float64) * 0.6
    out = act_halting(h, epsilon=0.05)
    torch.testing.assert_close(out.halting_probs.sum(0), torch.ones(200, dtype=torch.float64))
    assert (out.halting_probs >= 0).all()
    for b in range(200):  # N by a loop over the steps
        total, n = 0.0, 7
        for i in range(7):
            total += float(h[i, b])
            if total >= 0.95:
                n = i + 1
                break
        assert int(out.steps[b]) == n


def test_ponder_cost_gradient_reaches_halting_units_only_through_r():
    # ρ = N + R: ∂ρ/∂h_n = −1 for n < N, 0 for h_N and after (Graves eq. 12)
    h = _column(0.2, 0.3, 0.4, 0.3, 0.6).repeat(1, 2).requires_grad_()
    with torch.no_grad():
        h[:, 1] = torch.tensor([0.5, 0.6, 0.1, 0.1, 0.1], dtype=torch.float64)
    out = act_halting(h, epsilon=0.01)
    assert out.steps.tolist() == [4, 2]
    (out.steps + out.remainder).sum().backward()
    torch.testing.assert_close(h.grad, torch.tensor(
        [[-1, -1], [-1, 0], [-1, 0], [0, 0], [0, 0]], dtype=torch.float64))


def test_forward_is_the_recurrence_written_out():
    net = _net(embed_dim=4)
    x = net.example_input(3)
    out = net(x)
    cell = net.cell
    s = torch.zeros(3, 8)
    e = torch.relu(net.embed[0](x))
    states, ys, hs = [], [], []
    for n in range(net.max_steps):
        flag = torch.full((3, 1), 1.0 if n == 0 else 0.0)
        inp = torch.cat([e, flag], -1)
        # GRU with functional ops, independent of GRUCell.forward
        r_i, z_i, n_i = (inp @ cell.weight_ih.T + cell.bias_ih).chunk(3, 1)
        r_h, z_h, n_h = (s @ cell.weight_hh.T + cell.bias_hh).chunk(3, 1)
        r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
        s = (1 - z) * torch.tanh(n_i + r * n_h) + z * s
        states.append(s)
        ys.append(net.output(s))
        hs.append(torch.sigmoid(net.halting(s)).squeeze(-1))
    h = torch.stack(hs).detach()
    for b in range(3):
        total, n_b = 0.0, net.max_steps
        for i in range(net.max_steps):
            total += float(h[i, b])
            if total >= 1 - net.epsilon:
                n_b = i + 1
                break
        r_b = 1 - h[: n_b - 1, b].sum()
        p = torch.cat([h[: n_b - 1, b], r_b[None], torch.zeros(net.max_steps - n_b)])
        assert int(out.steps[b]) == n_b
        torch.testing.assert_close(out.halting_probs[:, b], p)
        torch.testing.assert_close(out.ponder_cost[b], n_b + r_b)
        torch.testing.assert_close(out.y_hat[b], sum(p[i] * ys[i][b] for i in range(n_b)))
        torch.testing.assert_close(out.state[b], sum(p[i] * states[i][b] for i in range(n_b)))


def test_n_never_exceeds_max_steps_and_pondering_stops_when_all_halted():
    net = _net()
    with torch.no_grad():
        net.halting.bias.fill_(-20.0)  # h ≈ 0: never reaches 1 − ε
    out = net(net.example_input(4))
    assert (out.steps == net.max_steps).all() and out.halting_probs.shape == (5, 4)
    torch.testing.assert_close(out.ponder_cost, torch.full((4,), 6.0))  # N + R = 5 + 1
    calls = []
    net.cell.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        net.halting.bias.fill_(20.0)  # h ≈ 1: halt at the first step
    out = net(net.example_input(4))
    assert len(calls) == 1 and (out.steps == 1).all()
    torch.testing.assert_close(out.halting_probs[0], torch.ones(4))


def test_ponder_cost_moves_only_the_halting_path_and_the_task_loss_all_of_it():
    net = _net(embed_dim=4)
    x = net.example_input(16)
    net(x).ponder_cost.sum().backward()
    assert net.halting.weight.grad.abs().sum() > 0
    assert net.output.weight.grad is None  # ρ does not depend on the outputs y_n
    net.zero_grad(set_to_none=True)
    out = net(x)
    act_loss(out.y_hat, torch.randint(0, 2, (16,)).float(), out.ponder_cost,
             tau=0.0)["loss"].backward()
    assert net.output.weight.grad.abs().sum() > 0 and net.halting.weight.grad.abs().sum() > 0


def test_act_loss_is_bce_plus_tau_times_ponder_cost():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 1, generator=g)
    y = torch.randint(0, 2, (8,), generator=g).float()
    rho = 1 + 3 * torch.rand(8, generator=g)
    out = act_loss(logits, y, rho, tau=0.01)
    prob = torch.sigmoid(logits[:, 0])
    bce = -(y * prob.log() + (1 - y) * (1 - prob).log()).mean()
    torch.testing.assert_close(out["task"], bce)
    torch.testing.assert_close(out["loss"], bce + 0.01 * rho.mean())
    torch.testing.assert_close(out["task"], F.binary_cross_entropy(prob, y))


def test_argument_ranges_are_checked():
    with pytest.raises(ValueError, match="epsilon=1"):
        create_model("act", epsilon=1.0)
    with pytest.raises(ValueError, match="max_steps=0"):
        create_model("act", max_steps=0)


def test_train_main_writes_the_halting_report(make_cfg, tmp_path):
    from mlnotes_zoo.train import main

    cfg = make_cfg("model=act", "model.net.hidden=16", "model.net.embed_dim=16",
                   "data.train_size=256", "data.val_size=64", "data.test_size=64",
                   "logger=csv", "callbacks.progress_bar=null")
    main(cfg)
    flat = json.dumps(json.loads((tmp_path / "metrics.json").read_text()))
    for key in ("test/acc", "test/acc_extrap", "test/steps", "test/steps_spearman"):
        assert key in flat, key
    table = json.loads((tmp_path / "pictures" / "halting_test.json").read_text())
    assert table["halting"].startswith("ACT") and sum(table["count"]) == 128
    assert (tmp_path / "pictures" / "halting_test.png").exists()
